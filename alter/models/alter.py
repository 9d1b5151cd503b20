"""The ALTER algorithm model: one denoiser, a hypernetwork, and Algorithm 1 in ``train_step``.

Per batch (ALTER_SPEC §5), while the step count is below ``hypernet_iters`` (T_end):

1. hypernetwork update, UNet frozen:
   ``L_H = L_perf(m'_t) + w_ratio * L_ratio + w_balance * L_balance``;
2. refresh of the hard mask table from the hypernetwork in eval mode;
3. UNet update, hypernetwork frozen: ``L_U`` under the hard masks of the table.

After T_end only step 3 runs, with the frozen table (``budget_fit``, an option
beyond the paper, first moves it onto the budget). ``schedule='two_stage'``
(the TwoStage ablation) runs step 1-2 alone until T_end, then step 3 alone.

Each sample has its own timestep, so the hypernetwork step runs the gated
blend ``(1 - g) * bypass(x) + g * f(x)`` with per-sample soft gates; the UNet
step runs the binary masks of the table as ``model.unet_step`` says
(``alter.models.unet_steps``): selected (default: each unit run on the
samples whose expert keeps it), blended, or grouped by expert under hard
skipping.
The denoiser is a UNet or a diffusion transformer (kept under the name
``unet``); a sample's routing row is the row of the timestep value the model
receives (``alter.inference.grids``), as at inference.
"""
import copy
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from mmengine.dist import all_reduce_dict
from mmengine.logging import print_log
from mmengine.optim import OptimWrapperDict
from torch import nn

from alter.inference.experts import ExpertSet, expert_record, weights_fingerprint
from alter.inference.routing import ExpertRouter
from alter.models.budget_fit import fit_gate_shift
from alter.models.conditioning import context_to
from alter.models.diffusion import LatentDiffusion
from alter.models.hypernet import HyperNetwork
from alter.models.losses import capture_block_outputs, unet_objective
from alter.models.regularizers import balance_loss, routing_smoothness
from alter.models.unet_steps import take_samples
from alter.registry import COST_MODELS, MODELS, PRUNING_SPACES, REGULARIZERS, UNET_STEPS
from alter.units.gating import UnitGating
from alter.units.macs import CONVENTIONS, MacTable, architecture_key, mac_table

# smooth: the routing-smoothness term, an option beyond the paper (off).
DEFAULT_LOSS_WEIGHTS = dict(denoise=1e-4, out_kd=1.0, feat_kd=1.0, ratio=5.0, balance=1.0, smooth=0.0)


def routing_segments(route: torch.Tensor) -> int:
    """Number of contiguous runs of one expert in a routing table (T,): 1 when a
    single expert serves every timestep, N_E when each owns one interval."""
    return 1 + int((route[1:] != route[:-1]).sum())


def bare(module: nn.Module) -> nn.Module:
    """The module inside a DDP-style wrapper (mmengine wraps children under DDP)."""
    return getattr(module, 'module', module)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` get no gradient inside the block."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


@MODELS.register_module()
class ALTER(LatentDiffusion):
    """UNet + hypernetwork trained jointly under a compute budget (MACs by default).

    Args:
        unet: config of the backbone (e.g. ``DiffusersUNet``); its weights are
            the student's initialisation and, unless ``teacher`` is given, the
            frozen dense teacher's.
        num_experts: N_E >= 1.
        target_sparsity: s in (0, 1); the budget is keep ratio p = 1 - s of
            the whole UNet's cost (``cost_model``), averaged over all training
            timesteps.
        hypernet_iters: T_end, the number of steps with hypernetwork updates.
        space: pruning space config.
        hypernet: extra ``HyperNetwork`` arguments (expert generator, router,
            temperatures, estimator).
        regularizer: sparsity regulariser config (``LogRatio`` in the paper).
        loss_weights: ``denoise``, ``out_kd``, ``feat_kd``, ``ratio``, ``balance``, and
            ``smooth``, the weight of ``routing_smoothness`` in L_H (0: the paper).
        schedule: ``joint`` (ALTER) or ``two_stage`` (TwoStage ablation).
        mac_convention: MAC convention of the ``macs`` cost model (``fvcore`` as in
            the paper).
        cost_model: ``COST_MODELS`` config of the per-unit costs the budget, the
            hypernetwork's L_ratio and the logged ``keep_ratio_<name>`` count:
            ``macs`` (default) or ``latency`` with ``table=`` a measured table.
        teacher: optional config of the dense teacher; same architecture
            required (default: a frozen copy of the initial UNet).
        unet_step: ``UNET_STEPS`` config of the UNet update, the same updates
            from each: ``selected`` (default; one forward, each unit run on the
            samples whose expert keeps it), ``blended`` (one forward, every
            unit on every sample, switched-off ones blended away) or ``grouped``
            (one hard-skipped forward and backward per expert in the batch; not
            under FSDP). Their speeds: docs/benchmarks.md.
        budget_fit: None (the paper) or a tolerance: if the table frozen at T_end
            keeps more than this far from p, every gate's threshold moves by one
            shared shift so that it keeps as close to p as the units allow
            (``alter.models.budget_fit``).
        **kwargs: ``LatentDiffusion`` arguments (noise scheduler, conditioning,
            ``pretrained``, ``resolution``, ``latent_scale``, ``context_length``,
            ``seed``); the training resolution fixes the per-unit MAC costs.
    """

    def __init__(self,
                 unet: dict,
                 num_experts: int,
                 target_sparsity: float,
                 hypernet_iters: int,
                 space: dict = dict(type='paper'),
                 hypernet: Optional[dict] = None,
                 regularizer: dict = dict(type='LogRatio'),
                 loss_weights: Optional[dict] = None,
                 schedule: str = 'joint',
                 mac_convention: str = 'fvcore',
                 teacher: Optional[dict] = None,
                 unet_step: dict = dict(type='selected'),
                 cost_model: dict = dict(type='macs'),
                 budget_fit: Optional[float] = None,
                 **kwargs) -> None:
        if not 0 < target_sparsity < 1:
            raise ValueError(f'target_sparsity must lie in (0, 1) (fraction of UNet MACs '
                             f'removed), got {target_sparsity}')
        if num_experts < 1:
            raise ValueError(f'num_experts must be at least 1, got {num_experts}')
        if schedule not in ('joint', 'two_stage'):
            raise ValueError(f"schedule must be 'joint' or 'two_stage', got {schedule!r}")
        if budget_fit is not None and not 0 <= budget_fit < 1:
            raise ValueError(f'budget_fit is a keep-ratio tolerance in [0, 1) or None (off), '
                             f'got {budget_fit}')
        if mac_convention not in CONVENTIONS:
            raise ValueError(f'mac_convention must be one of {CONVENTIONS}, got {mac_convention!r}')
        super().__init__(unet, **kwargs)
        self.target_keep = 1.0 - target_sparsity
        self.hypernet_iters = hypernet_iters
        self.schedule = schedule
        self.mac_convention = mac_convention
        self.budget_fit = budget_fit
        unknown = sorted(set(loss_weights or {}) - set(DEFAULT_LOSS_WEIGHTS))
        if unknown:
            raise ValueError(f'unknown loss_weights {unknown}; the weights are '
                             f'{sorted(DEFAULT_LOSS_WEIGHTS)}')
        self.loss_weights = dict(DEFAULT_LOSS_WEIGHTS, **(loss_weights or {}))
        self.teacher = self._freeze(self.build_component(teacher) if teacher
                                    else copy.deepcopy(self.unet))
        self._check_teacher()

        self.space = PRUNING_SPACES.build(space)
        units = self.space.find(self.unet)
        self.gating = UnitGating(units)
        self.costs: Dict[str, MacTable] = {
            c: mac_table(self.unet, units, self.space.name, self.resolution, self.latent_scale,
                         self.context_length, c) for c in CONVENTIONS}
        # The costs the budget counts: the MAC table itself, or e.g. measured latency.
        self.budget = COST_MODELS.build(cost_model).costs(
            self.unet, units, self.space.name, self.costs[mac_convention])
        lowest = self.budget.min_keep_ratio
        if self.target_keep < lowest:
            raise ValueError(
                f'target_sparsity {target_sparsity} needs keep ratio {self.target_keep:.3f}, but '
                f'the non-prunable part alone is {lowest:.3f} of the UNet ({self.space.name!r} '
                f'space, {self.resolution} px, {self.budget.name!r} costs); the largest reachable '
                f'sparsity is {1 - lowest:.3f}')
        self.regularizer = REGULARIZERS.build(regularizer)
        self.unet_step = UNET_STEPS.build(unet_step)

        self.grid = self.objective.grid(self.backbone.timestep_divisor)
        num_timesteps = self.grid.num_rows
        with torch.no_grad():  # the backbone's own sinusoidal projection e_t of every row
            features = self.backbone.time_projection(self.unet)(self.grid.values()).float()
        self.hypernet = HyperNetwork(len(units), num_experts, features, **(hypernet or {}))
        self.register_buffer('expert_masks', torch.ones(num_experts, len(units)))
        self.register_buffer('routing_table', torch.zeros(num_timesteps, dtype=torch.long))
        self.refresh_table()
        # The frozen teacher's validation images, per (caption, seed, sampling settings).
        self._teacher_images: Dict[tuple, torch.Tensor] = {}

    # -- construction helpers -------------------------------------------------

    def _check_teacher(self) -> None:
        if architecture_key(self.teacher) != architecture_key(self.unet):
            differ = {k for k in self.unet.config if not k.startswith('_')
                      and self.teacher.config.get(k) != self.unet.config.get(k)}
            raise ValueError('the teacher must have the student UNet\'s architecture; they '
                             f'differ in {sorted(differ)}')

    @property
    def data_dependent_children(self) -> Tuple[str, ...]:
        """Children whose forward runs a data-dependent subset of their parameters, so
        that data-parallel ranks run different ones (``SubmoduleParallel`` reads it)."""
        return () if self.unet_step.runs_every_unit else ('unet', )

    # -- the mask table -------------------------------------------------------

    def rows(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(B,) routing-table rows of training-scale ``timesteps``: the rows of the values
        the model receives, as inference looks them up."""
        return self.grid.rows(timesteps / self.backbone.timestep_divisor)

    @property
    def timestep_masks(self) -> torch.Tensor:
        """(T, N_L) hard masks of the table: m_t = expert_masks[route[t]]."""
        return self.expert_masks[self.routing_table]

    @torch.no_grad()
    def refresh_table(self) -> None:
        """Hard expert masks and routing table from the hypernetwork's deterministic rule."""
        masks, route = bare(self.hypernet).table()
        self.expert_masks.copy_(masks.float())
        self.routing_table.copy_(route)

    @torch.no_grad()
    def fit_table_to_budget(self) -> Dict[str, torch.Tensor]:
        """Move the table onto the budget if it misses it by more than ``budget_fit``:
        one shift of every gate threshold, the routing unchanged. Returns the shift
        and the keep ratio before it, for the log."""
        before = self.keep_ratios()[self.budget.name]
        shift = 0.0
        if abs(before - self.target_keep) > self.budget_fit:
            hypernet = bare(self.hypernet)
            logits = hypernet.experts() + hypernet.gate_offset  # (N_E, N_L)
            route = self.routing_table
            usage = torch.bincount(route, minlength=len(logits)) / len(route)  # (N_E,)
            shift = fit_gate_shift(logits, usage, self.budget, self.target_keep)
            self.expert_masks.copy_((logits + shift > 0).float())
            print_log(f'budget_fit: the table kept {before:.4f} for a target of '
                      f'{self.target_keep:.4f}; shifting every gate logit by {shift:+.4f} gives '
                      f'{self.keep_ratios()[self.budget.name]:.4f}', logger='current')
        return {'budget_fit/keep_ratio_before': torch.tensor(before),
                'budget_fit/shift': torch.tensor(shift)}

    def keep_ratios(self) -> Dict[str, float]:
        """Realised keep ratio of the hard table under each MAC convention and the budget's
        costs (one entry when the budget counts MACs)."""
        masks = self.timestep_masks
        tables = {**self.costs, self.budget.name: self.budget}
        return {c: table.keep_ratio(masks.double()).mean().item() for c, table in tables.items()}

    # -- training -------------------------------------------------------------

    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> Dict[str, torch.Tensor]:
        """One batch of Algorithm 1. ``data``: ``latents`` (B, C, h, w) and ``context``, or
        what the frozen encoders encode (``LatentDiffusion.encode``)."""
        step = int(self.num_steps)
        latents, context = self.start_step(data)
        batch = self.noisy_input(latents)
        x_t, timesteps = batch.x_t, batch.timesteps
        rows = self.rows(timesteps)
        with torch.no_grad(), capture_block_outputs(self.teacher) as teacher_features:
            dtype = self.frozen_dtype
            teacher_prediction = self.predict(self.teacher, x_t.to(dtype), timesteps,
                                              context_to(context, x_t.device, dtype))
        reference = (batch.target, teacher_prediction, teacher_features)

        hypernet_phase = step < self.hypernet_iters
        log: Dict[str, torch.Tensor] = {}
        if hypernet_phase:
            log.update(self._hypernet_step(x_t, timesteps, rows, context, reference,
                                           optim_wrapper['hypernet']))
            if step == self.hypernet_iters - 1 and self.budget_fit is not None:
                log.update(self.fit_table_to_budget())
        if self.schedule == 'joint' or not hypernet_phase:
            log.update(self._unet_step(x_t, timesteps, rows, context, reference,
                                       optim_wrapper['unet']))
        self.num_steps += 1
        # mmengine keeps showing the last hyper/* values after T_end; this says which phase ran.
        log['hypernet_active'] = torch.tensor(float(hypernet_phase))
        log.update({f'keep_ratio_{c}': torch.tensor(v) for c, v in self.keep_ratios().items()})
        usage = torch.bincount(self.routing_table, minlength=len(self.expert_masks)).float()
        log.update({f'usage_expert{i}': u / len(self.routing_table) for i, u in enumerate(usage)})
        log['routing_segments'] = torch.tensor(float(routing_segments(self.routing_table)))
        all_reduce_dict(log, 'mean')  # in place: log the global batch's values
        return log

    def _objective(self, unet: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor,
                   context: torch.Tensor, reference) -> Dict[str, torch.Tensor]:
        """Weighted terms of L_U for the gated student; call with the gating set.

        ``unet`` is ``self.unet`` (possibly a DDP wrapper, for the UNet step) or
        the bare UNet (hypernetwork step: no UNet gradients to synchronise).
        """
        with capture_block_outputs(bare(self.unet)) as features:
            prediction = self.predict(unet, x_t, timesteps, context)
        target, teacher_prediction, teacher_features = reference
        return unet_objective(prediction, target, teacher_prediction, features, teacher_features,
                              self.loss_weights, self.objective.denoising_loss)

    # The hypernetwork update keeps the gates set through backward, as the UNet
    # steps keep theirs: gradient checkpointing re-runs unit forwards there and
    # must see the same gates.

    def _hypernet_step(self, x_t, timesteps, rows, context, reference, optim_wrapper):
        """Hypernetwork update with the UNet frozen, then the table refresh."""
        w = self.loss_weights
        unet = bare(self.unet)
        with frozen(unet):
            with optim_wrapper.optim_context(self.hypernet):
                out = self.hypernet(generator=self.rng)
            with self.gating.soft(out.timestep_masks[rows]):
                with optim_wrapper.optim_context(self.hypernet):
                    terms = self._objective(unet, x_t, timesteps, context, reference)
                # The budget terms outside AMP's autocast, in float32 like H's output:
                # in half precision the keep ratio is off by ~1e-3 of the budget.
                keep = self.budget.keep_ratio(out.timestep_masks).mean()
                loss_perf = sum(terms.values())
                loss_ratio = w['ratio'] * self.regularizer(keep, self.target_keep)
                loss_balance = w['balance'] * balance_loss(out.routing, out.route_probs)
                loss_smooth = w['smooth'] * routing_smoothness(out.route_probs)
                loss = loss_perf + loss_ratio + loss_balance + loss_smooth
                optim_wrapper.update_params(loss)
        self.refresh_table()
        probs = out.route_probs.detach()
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
        return {'hyper/loss': loss.detach(), 'hyper/loss_perf': loss_perf.detach(),
                'hyper/loss_ratio': loss_ratio.detach(), 'hyper/loss_balance': loss_balance.detach(),
                'hyper/loss_smooth': loss_smooth.detach(),
                'hyper/keep_ratio_sampled': keep.detach(), 'hyper/router_entropy': entropy}

    def _unet_step(self, x_t, timesteps, rows, context, reference, optim_wrapper):
        """UNet update under the hard masks of the table (hypernetwork untouched)."""
        batch = (x_t, timesteps, context, reference)

        def loss(index: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
            # The teacher's outputs and features are taken at the same positions.
            return self._objective(self.unet, *take_samples(batch, index))

        terms = self.unet_step(self.unet, self.gating, self.expert_masks,
                               self.routing_table[rows], loss, optim_wrapper)
        return {'unet/loss': sum(terms.values()), **{f'unet/{k}': v for k, v in terms.items()}}

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, context,
                mode: str = 'tensor') -> torch.Tensor:
        """Routed prediction of the denoiser under the hard table; shapes as ``LatentDiffusion``'s."""
        with self.gating.soft(self.timestep_masks[self.rows(timesteps)]):
            return super().forward(latents, timesteps, context, mode)

    # -- validation -----------------------------------------------------------

    def inference_router(self) -> ExpertRouter:
        """The current table as deployed: the expert record ``tools/export.py`` writes,
        read back as an ``ExpertSet`` and routing this model's gating (hard skipping)."""
        unet = bare(self.unet)
        experts = ExpertSet.from_dict(expert_record(self.export_experts(), unet))
        return ExpertRouter(unet, experts, gating=self.gating)

    @torch.no_grad()
    def val_step(self, data: dict) -> List[dict]:
        """``LatentDiffusion.val_step`` of the routed student, plus each sample's
        ``teacher_image``: the dense teacher's image from the same prompt and noise
        (made once per prompt, seed and sampling setting: the teacher is frozen)."""
        outputs = super().val_step(data)
        setting = tuple(sorted(data['sampling'].items()))
        keys = [(s['caption'], s['seed'], setting) for s in data['samples']]
        missing = [i for i, key in enumerate(keys) if key not in self._teacher_images]
        if missing:
            images = self.generate(dict(data, samples=[data['samples'][i] for i in missing]),
                                   unet=bare(self.teacher))
            self._teacher_images.update((keys[i], image) for i, image in zip(missing, images))
        return [dict(out, teacher_image=self._teacher_images[key])
                for out, key in zip(outputs, keys)]

    # -- export ---------------------------------------------------------------

    def export_experts(self) -> dict:
        """The deployable artifact: expert masks, routing table, their costs and the
        fingerprint of the UNet's weights (under FSDP every rank must call this)."""
        table = self.costs[self.mac_convention]
        return dict(
            architecture=dict(class_name=type(bare(self.unet)).__name__,
                              key=architecture_key(bare(self.unet)),
                              config={k: v for k, v in bare(self.unet).config.items()
                                      if not k.startswith('_')}),
            space=self.space.name,
            unit_names=self.gating.names,
            num_experts=len(self.expert_masks),
            expert_masks=self.expert_masks.int().tolist(),
            routing_table=self.routing_table.tolist(),
            keep_ratio=self.keep_ratios(),
            target_keep_ratio=self.target_keep,
            macs={c: dict(total_per_call=t.total_macs,
                          expert_keep_ratio=t.keep_ratio(self.expert_masks.double()).tolist())
                  for c, t in self.costs.items()},
            resolution=table.resolution,
            context_length=table.context_length,
            weights_fingerprint=weights_fingerprint(bare(self.unet)),
            step=int(self.num_steps),
            **self.grid.record())
