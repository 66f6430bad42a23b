"""Triton kernels of the search engine, installed as ``sswp_fast.kernels``.

Each module holds one fused op: its Triton kernels, the launchers, the ``torch.library`` custom ops (namespace
``sswp_fast``, each with a fake kernel, and an autograd formula where it is differentiated) and a pure-PyTorch
reference that the tests compare it with. Which backend a run uses is decided in one place,
:mod:`sswp_fast.search.executors.choice`. Whether a launch is compiled or interpreted is decided at the launch
(:mod:`.common`): CUDA tensors are compiled, CPU tensors interpreted when ``TRITON_INTERPRET=1`` is set then, which
is how CI tests them.

A module's public API is its ``__all__``, listed here; nothing outside a module imports anything else of it
(``tests/kernels/test_public_api.py``):

* :mod:`.common`: ``jit``, ``launcher``, ``interpreted``, ``interpreter_on``, ``runs_on_triton``, ``check_device``,
  ``cast_out``, ``weight_gradient_buffer``, ``TRITON_LIBRARY_COMPILED``.
* :mod:`.dwpw`: ``relu_dw_pw`` (ops ``relu_dw_pw``, ``relu_dw_pw_backward``), ``dwpw_forward``, ``dwpw_backward``,
  ``dwpw_reference``; for the slotted kernels, the tile functions ``fwd_tile``, ``bwd_act_tile``, ``bwd_dx_tile``,
  ``copy_tile``, ``zero_tile``, ``pixel_tile`` and the tiling ``block_sizes``, ``grid_tiles``, ``dot_precision``.
* :mod:`.sampled_dwpw`: ``sampled_dwpw`` (ops ``sampled_dwpw``, ``sampled_dwpw_backward``), ``sampled_dwpw_grads``,
  ``sampled_dwpw_forward``, ``sampled_dwpw_backward``, ``sampled_dwpw_reference``, ``Variant``.
* :mod:`.sampled_pool`: ``pool_fwd_tile``, ``pool_bwd_tile``, ``pool_output_size``, ``pool_reference``,
  ``pool_reference_backward``, ``MAX``, ``AVG``.
* :mod:`.sampled_reduce`: ``sampled_reduce`` (ops ``sampled_reduce``, ``sampled_reduce_backward``),
  ``sampled_reduce_grads``, ``sampled_reduce_forward``, ``sampled_reduce_backward``, ``sampled_reduce_reference``.
* :mod:`.slot_sum`: ``slot_sum`` (ops ``slot_sum``, ``slot_sum_backward``), ``slot_sum_forward``,
  ``slot_sum_backward``, ``slot_sum_reference``, ``FIRST``, ``SECOND``, ``SKIP``, ``NONE``.
* :mod:`.mixed_activation`: ``mixed_activation`` (ops ``activate_and_mix``, ``activate_and_mix_backward``),
  ``mixed_activation_forward``, ``mixed_activation_backward``, ``ACTIVATION_CODES``.
* :mod:`.batchnorm`: ``batch_norm`` (``BatchNormFn`` over the ops ``batch_norm_train``, ``batch_norm_apply``,
  ``batch_norm_backward``), ``bn_train_forward``, ``bn_forward``, ``bn_backward``, ``bn_reference``,
  ``bn_banked_reference``.
"""
