"""Diffusion from Scratch: the course package, promoted from the chapters.

Generated modules (edit the chapter, then ``python tools/promote.py``; CI fails on drift):

- ``ddpm_lib.schedule``  <- ``chapters/01_noise_schedule.py``: ``NoiseSchedule``, ``LinearBetaScheduler``;
  ``chapters/09_cosine_schedule.py``: ``CosineScheduler``, ``make_schedule``
- ``ddpm_lib.diffusion`` <- ``chapters/02_forward_process.py``: ``q_sample``, ``q_step``; ``convert_prediction`` (the
  one conversion between the targets ε, v and x_0), ``prediction_target``, ``prediction_of``
- ``ddpm_lib.theory``    <- ``chapters/03_theory.py``: the posterior, the variational bound and its terms, the toy
  mixture with its exact score (``GaussianMixture``, ``ExactDenoiser``), ``variational_bound``
- ``ddpm_lib.unet``      <- ``chapters/04_unet.py``: ``Unet`` and its pieces (``SelfAttention`` among them),
  ``Conditioned``
- ``ddpm_lib.training``  <- ``chapters/05_training.py``: ``ddpm_loss``, ``train_step``, ``EMA``, ``train`` (the
  only training loop: one process or many)
- ``ddpm_lib.sampling``  <- ``chapters/06_sampling.py``: ``predict_noise`` (ε̂ from any target), ``predict_x0``,
  ``posterior_step`` (the one posterior step, full and respaced chains), ``reverse_step``, ``sample``,
  ``sample_clip``, ``run_chain``, ``sample_loop``, ``grid_image``
- ``ddpm_lib.metrics``   <- ``chapters/07_evaluation.py``: ``MnistClassifier``, ``frechet_distance``,
  ``class_statistics``, ``evaluate_images``
- ``ddpm_lib.fast_sampling`` <- ``chapters/08_fast_sampling.py``: ``timesteps_for``, ``ddim_step``, ``ddim_sample``,
  ``dpm_solver_pp_update``, ``dpm_solver_pp_sample``
- ``ddpm_lib.guidance``  <- ``chapters/10_guidance.py``: ``ClassifierFreeGuidance``, ``AutoGuidance``,
  ``class_spread``
- ``ddpm_lib.inpainting`` <- ``chapters/12_inpainting.py``: ``make_mask``, ``q_jump``, ``inpaint``
- ``ddpm_lib.domains``  <- ``chapters/15_fashion_mnist.py``: ``image_statistics``, ``accuracy_under_noise``,
  ``confusion_matrix``
- ``ddpm_lib.synthetic`` <- ``chapters/16_generated_data.py``: ``SmallClassifier``, ``train_small_classifier``,
  ``real_subset``, ``mean_and_error``, ``generated_set``

Hand-written plumbing (teaches nothing about diffusion):

- ``ddpm_lib.profile``: the ``DDPM_PROFILE`` switch between the full and the CI profile
- ``ddpm_lib.data``: MNIST (bundled subset or torchvision) and Fashion-MNIST as tensors in [-1, 1]
- ``ddpm_lib.plotting``: figure helpers shared by the chapters and the command line
- ``ddpm_lib.errors``: ``UsageError``, the one exception that means "bad input" (exit status 2 on the command line)
- ``ddpm_lib.checks``: the argument checks the promoted modules share
- ``ddpm_lib.options``: options declared once, with their defaults, help and checks, and their argparse options
- ``ddpm_lib.spec``: ``SampleSpec``, everything that decides how samples are drawn
- ``ddpm_lib.generation``: ``generate``, the one way to draw samples (sampler dispatch, seeding, batching, labels,
  guidance, autoguidance), ``sample_weights`` (the command line's ``sample`` in one call), ``save_image``
- ``ddpm_lib.config``: ``TrainConfig`` (every training option, once), ``resolve_train_config``, ``RunRecord``, presets
- ``ddpm_lib.checkpoint``: the checkpoint format (schema, version, kinds), atomic fsync'ed writes of every file,
  reading with ``weights_only=True``
- ``ddpm_lib.precision``: which device, and which precision the hardware computes fast in
- ``ddpm_lib.runner``: training runs (run folder, resume, Ctrl-C, wandb)
- ``ddpm_lib.distributed``: torchrun's processes, and the hooks that make chapter 05's loop data-parallel
- ``ddpm_lib.pretrained``: the weights the course ships, with their provenance and sampling recipes
- ``ddpm_lib.evaluation``: scores of samples against held-out images, the bound and inpainting on held-out digits,
  the evaluation classifier's training
- ``ddpm_lib.export``: the shipped denoisers as ONNX graphs for the book's Try it page
- ``ddpm_lib.course``: student copies of the chapters for instructors
- ``ddpm_lib.fingerprint`` and ``ddpm_lib.result_cache``: what code a computation ran, and results kept while that
  code is unchanged (the maintainers' chapter executions)
- ``ddpm_lib.cli`` / ``ddpm_lib.__main__``: ``python -m ddpm_lib ...`` and the ``ddpm`` command
"""

__version__ = "0.2.0"
