"""jaxadv: adversarial robustness seen through interpretation, in JAX.

Sub-packages (imports run one way, from the top down):

* ``jaxadv.training``   explicit-state training steps, objectives, the loop, checkpoints.
* ``jaxadv.attacks``    pure attack functions ``attack(logits_fn, x, y, key, *, ...)``.
* ``jaxadv.attributions`` differentiable interpretation maps.
* ``jaxadv.data``       datasets by name -> numpy batches (images float32 in [0, 1], NHWC).
* ``jaxadv.models``     Flax modules exposing ``features`` and ``head`` for CAM.

Importing ``jaxadv`` has no side effects: sub-packages are imported on demand.
"""

__version__ = "0.1.0"
