"""Diffusion from Scratch: the course package, promoted from the chapters.

Generated modules (edit the chapter, then ``python tools/promote.py``; CI fails on drift):

- ``ddpm_lib.schedule``  <- ``chapters/01_noise_schedule.py``: ``LinearBetaScheduler``
- ``ddpm_lib.diffusion`` <- ``chapters/02_forward_process.py``: ``q_sample``, ``q_step``

Hand-written plumbing (teaches nothing about diffusion):

- ``ddpm_lib.profile``: the ``DDPM_PROFILE`` switch between the full and the CI profile
- ``ddpm_lib.data``: MNIST (bundled subset or torchvision) as tensors in [-1, 1]
- ``ddpm_lib.plotting``: figure helpers shared by the chapters
- ``ddpm_lib.cli`` / ``ddpm_lib.__main__``: ``python -m ddpm_lib ...`` and the ``ddpm`` command
"""

__version__ = "0.1.0"
