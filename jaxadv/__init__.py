"""jaxadv: adversarial robustness seen through interpretation, in JAX.

Sub-packages (imports run one way, from the top down):

* ``jaxadv.training``   explicit-state training steps, objectives, the loop, checkpoints.
* ``jaxadv.attacks``    pure attack functions ``attack(logits_fn, x, y, key, *, ...)``.
* ``jaxadv.attributions`` differentiable interpretation maps.
* ``jaxadv.data``       datasets by name -> numpy batches (images float32 in [0, 1], NHWC).
* ``jaxadv.models``     Flax modules exposing ``features`` and ``head`` for CAM.

Sub-packages are imported on demand. Importing ``jaxadv`` has two side effects, on CPU speed only,
so import jaxadv before JAX's first computation:

* where a host device has two or more cores it adds an XLA:CPU flag to ``XLA_FLAGS`` that runs
  convolutions on every core (:func:`jaxadv.devices.set_cpu_convolution_flags`, which says when
  and how to keep XLA's default);
* on Linux with glibc and no accelerator plugin it sets glibc's ``malloc`` to keep the memory XLA
  frees for the next call instead of page-faulting it in again every call, and runs single-device
  CPU computations in the calling thread (JAX's ``jax_cpu_enable_async_dispatch`` off), whose
  malloc arena can keep blocks of more than 64 MiB too (:mod:`jaxadv.host_memory`; this imports
  ``jax``; ``JAXADV_REUSE_HOST_MEMORY=0`` leaves malloc and dispatch as they are).
"""

from jaxadv import devices as _devices
from jaxadv import host_memory as _host_memory

__version__ = "0.1.0"

_devices.set_cpu_convolution_flags()
_host_memory.reuse_freed_memory_unless_disabled()
