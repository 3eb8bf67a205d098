"""Per-row statistics of one forward and one backward pass of any model, as a wide DataFrame.

``trace(model, inputs)`` hooks the model's measurement points: those its modules declare
(``initcore.models.Measure``), or a selection (``initcore.probe.select``: by type, name pattern, list,
callable, "default", "blocks"); each hook reduces what it sees at once (``initcore.probe.reduce``), and
attention statistics come from watching ``scaled_dot_product_attention`` (``initcore.probe.attention``),
in rows of their own named ``<calling module>:sdpa`` (``SDPA_SUFFIX``) unless a declaration takes them.
On a GPU the numbers stay on the device and cross to the host in one copy; on a CPU numpy reads the
tensors' own memory and the numbers are floats at once. ``to_long`` gives ``module, statistic, value``
rows; ``mlp_theory`` and ``with_theory`` put mean-field predictions beside an MLP's measurements.
"""

from initcore.probe.frames import mlp_theory, to_long, with_theory
from initcore.probe.select import ACTIVATION_TYPES, SELECTIONS, Point, first_tensor, is_activation, points
from initcore.probe.tracing import (
                                    COLUMNS,
                                    ID_COLUMNS,
                                    LOSSES,
                                    PRESETS,
                                    SDPA_SUFFIX,
                                    STATISTICS,
                                    Outputs,
                                    statistics_of,
                                    trace,
)

__all__ = ["ACTIVATION_TYPES", "COLUMNS", "ID_COLUMNS", "LOSSES", "PRESETS", "SDPA_SUFFIX", "SELECTIONS", "STATISTICS",
           "Outputs", "Point", "first_tensor", "is_activation", "mlp_theory", "points", "statistics_of", "to_long",
           "trace", "with_theory"]
