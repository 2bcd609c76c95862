"""PyTorch's default initialisers, expressed with JAX initialisers.

The official code relies on them, so matching them keeps early training dynamics comparable.
"""

import jax
from flax import linen as nn

# nn.init.kaiming_normal_ (fan_in, gain sqrt(2)): N(0, 2 / fan_in), untruncated.
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# PyTorch's default for Conv2d / Linear weights, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
    """PyTorch's default bias init U(+-1/sqrt(fan_in)). JAX has no symmetric-range uniform
    initialiser and a bias shape does not carry the fan-in, hence this small closure."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
