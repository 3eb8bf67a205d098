"""The bench's stored baselines on the report's figures: seed bands to draw, and the report's own trace
checked against them.

``baselines/<experiment>.csv`` holds, per (config, layer, statistic), the mean and the sample std
("spread") over 16 seeds (log space for scales; see ``initcore.baselines``). A figure draws mean +- 2
spreads, where 95% of seeds fall; a check runs ``baselines.compare`` (the bench's own band, mean +-
(K spread + floor)) on the statistics the report traced. A missing or corrupt file costs its bands and
checks, not the report: the problem is stated on the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from initcore import baselines

BAND_SPREADS = 2.0  # drawn: mean +- 2 seed spreads
UNDERFLOW = 1e-20  # scales below float32's underflow are not compared (the bench raises them to this)


def default_directory() -> Path | None:
    """``baselines/`` of the source checkout this package runs from, if there is one."""
    candidate = Path(__file__).resolve().parents[2] / "baselines"
    return candidate if candidate.is_dir() else None


@dataclass(frozen=True)
class Verdict:
    """The report's trace of one run against its baseline rows."""

    experiment: str
    config: str
    n_compared: int
    outside: tuple[str, ...]  # "layer statistic: value not in [low, high]"
    problem: str = ""  # why nothing was compared, if nothing was

    @property
    def passed(self) -> bool | None:
        return None if self.n_compared == 0 else not self.outside


@dataclass
class SeedBands:
    """The baselines in ``directory`` (None: none), each file read and validated once."""

    directory: Path | None = field(default_factory=default_directory)
    problems: list[str] = field(default_factory=list)
    _tables: dict[str, pd.DataFrame | None] = field(default_factory=dict)

    def table(self, experiment: str) -> pd.DataFrame | None:
        if experiment not in self._tables:
            self._tables[experiment] = None
            if self.directory is None:
                self._note("no baselines/ folder beside this installation: no seed bands or baseline checks")
            else:
                try:
                    self._tables[experiment] = baselines.load(self.directory / f"{experiment}.csv")
                except FileNotFoundError:
                    self._note(f"no {experiment}.csv in {self.directory}")
                except (OSError, baselines.BaselineCorrupt) as e:
                    self._note(str(e))
        return self._tables[experiment]

    def _note(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def band(self, experiment: str, config: str, statistic: str) -> pd.DataFrame:
        """Columns layer, centre, low, high (natural units: exp of a log row) for one config and statistic;
        empty when there is no baseline."""
        table = self.table(experiment)
        if table is None:
            return pd.DataFrame(columns=["layer", "centre", "low", "high"])
        rows = table[(table["config"] == config) & (table["statistic"] == statistic)]
        mean, spread = rows["mean"].to_numpy(float), rows["spread"].to_numpy(float)
        log = (rows["scale"] == "log").to_numpy()
        low, high = mean - BAND_SPREADS * spread, mean + BAND_SPREADS * spread
        return pd.DataFrame({"layer": rows["layer"].to_numpy(), "centre": np.where(log, np.exp(mean), mean),
                             "low": np.where(log, np.exp(low), low), "high": np.where(log, np.exp(high), high)})

    def check(self, experiment: str, config: str, measured: pd.DataFrame) -> Verdict:
        """``measured`` (layer, statistic, value) against the baseline rows of ``config`` it has values for."""
        table = self.table(experiment)
        if table is None:
            return Verdict(experiment, config, 0, (), "no baseline file")
        rows = table[table["config"] == config]
        if rows.empty:
            return Verdict(experiment, config, 0, (), f"no baseline of {config}")
        values = measured.astype({"value": float})
        values = values[np.isfinite(values["value"]) & ~(values["value"].abs() < UNDERFLOW)]
        values = values.merge(rows[["layer", "statistic"]], on=["layer", "statistic"])
        if values.empty:
            return Verdict(experiment, config, 0, (), "no traced statistic has a baseline row")
        result = baselines.compare(values.assign(config=config), rows.merge(values[["layer", "statistic"]]))
        bad = result[~result["ok"]]
        outside = tuple(f"{r.layer} {r.statistic}: {r.measured:.4g} not in [{r.low:.4g}, {r.high:.4g}]"
                        for r in bad.itertuples())
        return Verdict(experiment, config, len(result), outside)


def tidy(frame: pd.DataFrame, statistics: tuple[str, ...]) -> pd.DataFrame:
    """A trace frame's ``statistics`` as (layer, statistic, value) rows, layer the probe's module name."""
    parts = [pd.DataFrame({"layer": frame["module"].astype(str), "statistic": s, "value": frame[s].astype(float)})
             for s in statistics if s in frame]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["layer", "statistic", "value"])
    return out[out["value"].map(lambda v: not math.isnan(v))].reset_index(drop=True)
