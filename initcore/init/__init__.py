"""Init strategies by name, targeting parameter roles: ``apply(model, "xavier_uniform")``."""

from initcore.init.functions import kaiming_normal_gain_, kaiming_uniform_gain_, lecun_normal_, trunc_normal_sigma_
from initcore.init.mup import param_groups as param_groups  # registers "mup"
from initcore.init.strategies import (
    RESIDUAL_OUT,
    Context,
    Strategy,
    activation_gain,
    apply,
    describe,
    get,
    names,
    promise,
    register,
)
from initcore.init.targets import Site, Target
from initcore.init.verify import InitMismatchError

__all__ = [
    "RESIDUAL_OUT", "Context", "InitMismatchError",
    "Site", "Strategy", "Target", "activation_gain", "apply", "describe", "get", "names",
    "promise", "register",
    "kaiming_normal_gain_", "kaiming_uniform_gain_", "lecun_normal_", "trunc_normal_sigma_",
]
