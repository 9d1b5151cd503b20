"""Timestep grids: which row of a routing table serves the timestep value a denoiser receives.

A routing table has T rows (T = the training schedule's ``num_train_timesteps``,
1000). Routing looks a row up by the *value the model receives* in a call --
never by a step index, never clamped:

* ``DiscreteGrid`` -- DDPM-trained models (SD UNets, DiT, PixArt-alpha) receive a
  training timestep t in 0..T-1; schedulers may pass fractional values, so
  row = round(t). The grid of every UNet checkpoint; recorded as no field at all.
* ``SigmaGrid`` -- flow-matching models (SD3, Flux) receive a continuous noise
  level: ``sigma * sigma_scale`` with sigma in (0, 1] (SD3: ``sigma_scale`` =
  1000, Flux: 1). Row i serves sigma in (i / T, (i + 1) / T], i.e.
  row = ceil(sigma * T) - 1, so sigma = 1 (pure noise) is row T - 1.

A value off the grid raises: it is not a value the model was trained on
(another scheduler's convention), and clamping it would silently run the
expert of the first or last row.

Contract: ``row(value) -> int`` (host side, one call), ``rows(values) -> LongTensor``
(training batches), ``values() -> (T,)`` the training-scale timestep of each row
(what the model's time projection sees there: the router's input),
``check_scheduler(scheduler)`` and ``record()`` (the grid's ``experts.json`` fields).
"""
import math
from dataclasses import dataclass

import torch

from alter.registry import TIMESTEP_GRIDS


def _off_grid(value: float, what: str) -> ValueError:
    return ValueError(f'timestep {value} is off the training grid {what} that the routing table '
                      'is indexed by: route with a scheduler of the training noise schedule')


@TIMESTEP_GRIDS.register_module()
@dataclass(frozen=True)
class DiscreteGrid:
    """Rows are the training timesteps 0..T-1 of a DDPM schedule; row = round(t)."""

    num_rows: int

    def row(self, value: float) -> int:
        value = float(value)
        index = round(value) if math.isfinite(value) else -1
        if not 0 <= index < self.num_rows:
            raise _off_grid(value, f'0..{self.num_rows - 1}')
        return index

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps -> (B,) int64 rows; raises for any value off the grid."""
        rows = values.round().long() if values.is_floating_point() else values.long()
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise _off_grid(f'range [{values.min().item()}, {values.max().item()}]',
                            f'0..{self.num_rows - 1}')
        return rows

    def values(self) -> torch.Tensor:
        return torch.arange(self.num_rows)

    def check_scheduler(self, scheduler) -> None:
        """Raise unless ``scheduler`` gives the model timesteps of this grid.

        Refused: schedulers without a discrete noise schedule (EDM-style ones
        pass ``log(sigma) / 4``, ``FlowMatch*`` ones ``sigma * T``),
        ``timestep_type='continuous'``, flow sigmas, and another number of
        training timesteps.
        """
        config = scheduler.config
        name = type(scheduler).__name__
        if not hasattr(scheduler, 'alphas_cumprod'):
            raise ValueError(f'{name} defines no discrete noise schedule (alphas_cumprod over '
                             'training timesteps): its model timesteps are continuous noise '
                             'levels, not the training timesteps the experts are routed by. Use a '
                             'discrete-time scheduler such as DDIM, PNDM, DPM-Solver++, Euler or '
                             'UniPC')
        if config.get('timestep_type') == 'continuous':
            raise ValueError(f"{name} with timestep_type='continuous' passes the model "
                             "log(sigma)/4 (EDM), not a training timestep; use "
                             "timestep_type='discrete'")
        if config.get('use_flow_sigmas') or config.get('prediction_type') == 'flow_prediction':
            raise ValueError(f'{name} with flow-matching sigmas passes the model sigma * T, not a '
                             'training timestep of the DDPM schedule the experts were trained '
                             'on; use use_flow_sigmas=False')
        _check_num_timesteps(scheduler, self.num_rows)

    def record(self) -> dict:
        return {}


@TIMESTEP_GRIDS.register_module()
@dataclass(frozen=True)
class SigmaGrid:
    """Rows are T equal bins of sigma in (0, 1]; the model receives ``sigma * sigma_scale``."""

    num_rows: int
    sigma_scale: float

    # Values within this many rows' width of a bin edge belong to the lower bin: a
    # value the pipeline scales (Flux passes t / 1000) may land an ulp above an edge.
    TOLERANCE = 1e-3

    def __post_init__(self) -> None:
        scale = self.sigma_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or \
                not math.isfinite(scale) or scale <= 0:
            raise ValueError(f'sigma_scale must be a positive number (the value a model receives '
                             f'at sigma = 1: 1000 for SD3, 1 for Flux), got {scale!r}')

    def row(self, value: float) -> int:
        return int(self.rows(torch.tensor([float(value)], dtype=torch.float64))[0])

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """(B,) received values -> (B,) int64 rows; raises for sigma outside (0, 1]."""
        position = values.double() / self.sigma_scale * self.num_rows
        rows = torch.ceil(position - self.TOLERANCE).long() - 1
        if rows.numel() and not (torch.isfinite(position).all() and rows.min() >= 0
                                 and position.max() <= self.num_rows + self.TOLERANCE):
            raise _off_grid(f'range [{values.min().item()}, {values.max().item()}]',
                            f'(0, {self.sigma_scale}] (sigma times {self.sigma_scale})')
        return rows

    def values(self) -> torch.Tensor:
        # Bin centres, on the training scale 0..T the time projection sees.
        return torch.arange(self.num_rows, dtype=torch.float64).add(0.5).float()

    def check_scheduler(self, scheduler) -> None:
        """Raise unless ``scheduler`` hands the model flow-matching sigmas of a
        ``num_train_timesteps = T`` schedule (``FlowMatch*`` schedulers, or
        ``use_flow_sigmas=True``)."""
        name = type(scheduler).__name__
        if not (name.startswith('FlowMatch') or scheduler.config.get('use_flow_sigmas')):
            raise ValueError(f'{name} does not pass the model flow-matching sigmas, which the '
                             'experts of a flow-matching model are routed by; use '
                             'FlowMatchEulerDiscreteScheduler (the pipeline\'s own) or another '
                             'FlowMatch* scheduler')
        _check_num_timesteps(scheduler, self.num_rows)

    def record(self) -> dict:
        return dict(timestep_grid=dict(type=type(self).__name__, sigma_scale=self.sigma_scale))


def _check_num_timesteps(scheduler, num_rows: int) -> None:
    found = scheduler.config.get('num_train_timesteps')
    if found != num_rows:
        raise ValueError(f'{type(scheduler).__name__} has {found} training timesteps, the routing '
                         f'table {num_rows}; use the training schedule\'s')
