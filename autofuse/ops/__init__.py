"""Op lowerings, one module per family; importing this package registers them all."""
from autofuse.ops import (  # noqa: F401  (imported for their registrations)
    attention,
    blas,
    classic_ml,
    control,
    elementwise,
    image,
    internal,
    nn,
    packed,
    quantization,
    recurrent,
    reduction,
    sequence,
    signal,
    sparse,
    tensor,
)
from autofuse.ops.registry import Mapping, OpSpec, lookup, registered_ops

__all__ = ["Mapping", "OpSpec", "lookup", "registered_ops"]
