"""Record what every Python process of a chapter execution runs (``tools/execute_chapters.py``).

The executor puts this folder first on ``PYTHONPATH`` and sets ``DDPM_RECORD_DIR`` for the chapter's kernel, so
Python imports this module at start-up in the kernel and in every Python process the chapter starts
(``python -m ddpm_lib train``, ``torchrun`` and its workers): each records the package code it runs and the
package data files it opens (``ddpm_lib.fingerprint``) and writes them to that folder when it exits. Without the
variable this module does nothing but hand over to any other ``sitecustomize`` further along the path.
"""

import importlib.util
import os
import sys

if os.environ.get("DDPM_RECORD_DIR"):
    try:
        from ddpm_lib.fingerprint import record_this_process

        record_this_process(os.environ["DDPM_RECORD_DIR"])
    except Exception as error:  # never stop a process from starting; the executor reports missing records
        print(f"tools/recording/sitecustomize.py: not recording this process ({error})", file=sys.stderr)

# Hand over to the sitecustomize this one shadows, if there is one.
_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if os.path.abspath(_entry or os.curdir) == _here:
        continue
    _path = os.path.join(_entry or os.curdir, "sitecustomize.py")
    if os.path.isfile(_path):
        _spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", _path)
        _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        break
