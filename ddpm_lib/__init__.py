"""Diffusion from Scratch: the course package, promoted from the chapters.

Generated modules (edit the chapter, then ``python tools/promote.py``; CI fails on drift):

- ``ddpm_lib.schedule``  <- ``chapters/01_noise_schedule.py``: ``NoiseSchedule``, ``LinearBetaScheduler``;
  ``chapters/08_cosine_schedule.py``: ``CosineScheduler``, ``make_schedule``
- ``ddpm_lib.diffusion`` <- ``chapters/02_forward_process.py``: ``q_sample``, ``q_step``
- ``ddpm_lib.unet``      <- ``chapters/03_unet.py``: ``Unet`` and its pieces, ``Conditioned``
- ``ddpm_lib.training``  <- ``chapters/04_training.py``: ``ddpm_loss``, ``train_step``, ``EMA``, ``train``
- ``ddpm_lib.sampling``  <- ``chapters/05_sampling.py``: ``sample``, ``sample_clip``, ``sample_loop``, ``save_image``
- ``ddpm_lib.metrics``   <- ``chapters/06_evaluation.py``: ``MnistClassifier``, ``frechet_distance``,
  ``class_statistics``, ``evaluate_images``, ``generate_samples``, ``balanced_labels``
- ``ddpm_lib.fast_sampling`` <- ``chapters/07_fast_sampling.py``: ``timesteps_for``, ``ddim_sample``,
  ``dpm_solver_pp_sample``, ``respaced_ddpm_sample``, ``fast_generate``
- ``ddpm_lib.guidance``  <- ``chapters/09_guidance.py``: ``ClassifierFreeGuidance``, ``class_spread``
- ``ddpm_lib.inpainting`` <- ``chapters/10_inpainting.py``: ``make_mask``, ``q_jump``, ``inpaint``

Hand-written plumbing (teaches nothing about diffusion):

- ``ddpm_lib.profile``: the ``DDPM_PROFILE`` switch between the full and the CI profile
- ``ddpm_lib.data``: MNIST (bundled subset or torchvision) as tensors in [-1, 1]
- ``ddpm_lib.plotting``: figure helpers shared by the chapters
- ``ddpm_lib.checkpoint``: atomic checkpoints read with ``weights_only=True``
- ``ddpm_lib.runner``: training runs from the command line (run folder, resume, Ctrl-C, wandb)
- ``ddpm_lib.distributed``: the same runs on several processes under torchrun (DistributedDataParallel)
- ``ddpm_lib.pretrained``: the weights the course ships, with their provenance
- ``ddpm_lib.course``: student copies of the chapters for instructors
- ``ddpm_lib.cli`` / ``ddpm_lib.__main__``: ``python -m ddpm_lib ...`` and the ``ddpm`` command
"""

__version__ = "0.1.0"
