"""A small, resumable training loop for registration networks, driven from MONAI bundle configs.

:class:`RegistrationTrainer` runs ``max_iterations`` optimiser steps over a map-style dataset
whose item ``i`` is a deterministic function of ``i`` (e.g.
:class:`~monai_diffreg.engines.training_data.SyntheticPairDataset`). Iteration ``t`` of rank
``r`` in a world of ``W`` processes reads items ``(t W + r) B .. (t W + r + 1) B - 1`` (``B`` =
batch size), so the data stream needs no saved state and resuming is exact.

* **Checkpoints** every ``checkpoint_interval`` iterations in ``output_dir``
  (``checkpoint_<iteration>.pt``: model, optimiser, scheduler, iteration, every rank's torch
  RNG state), written atomically (temporary file + ``os.replace``); the newest
  ``keep_checkpoints`` are kept. ``resume=True`` continues from the newest one; on CPU,
  training ``N`` iterations straight or ``k`` + resume + ``N - k`` gives bitwise-identical weights.
* **Non-finite loss or gradients** stop training before the optimiser step with a
  :class:`FloatingPointError` naming the iteration and the loss terms; nothing is saved
  after the last good checkpoint, so no broken model is ever written.
* **Logging** of the loss terms and seconds per iteration to ``output_dir/train_log.txt``
  (and stdout), one line every ``log_interval`` iterations.
* **Final weights** (``state_dict`` of the bare network) saved atomically to
  ``output_dir/model.pt``.
* **DDP** with ``distributed=True``: the process group is initialised from the usual
  ``torchrun`` environment variables (``gloo`` on CPU, ``nccl`` on CUDA), the network is
  wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, only rank 0 writes files.

A training step is ``step_fn(network, loss_function, batch) -> dict`` of scalar tensors with
a ``"loss"`` entry to minimise; the default, :func:`registration_step`, fits
:class:`~monai_diffreg.networks.ProbabilisticVoxelMorph` with
:class:`~monai_diffreg.losses.prob_svf.ProbabilisticSVFLoss`.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate

from ..losses.hypermorph import sample_reg_weight

__all__ = ["RegistrationTrainer", "registration_step", "hypermorph_step", "energy_step", "save_atomic", "latest_checkpoint",
           "export_weights", "export_stage_weights"]

_CHECKPOINT = re.compile(r"^checkpoint_(\d+)\.pt$")


def registration_step(network: nn.Module, loss_function: Callable, batch: Mapping[str, torch.Tensor]) -> dict:
    """One forward pass of a pairwise registration network and its loss.

    Args:
        network: called as ``network(moving, fixed)`` and returning a dict of outputs.
        loss_function: called as ``loss_function(outputs, fixed, moving, fixed_labels, moving_labels)``
            (labels ``None`` when the batch has none) and returning a dict with ``"loss"``.
        batch: dict with ``"moving"``, ``"fixed"`` ``(B, C, *S)`` and optionally one-hot
            ``"moving_labels"``, ``"fixed_labels"`` ``(B, L, *S)``.
    """
    outputs = network(batch["moving"], batch["fixed"])
    return loss_function(outputs, batch["fixed"], batch["moving"], batch.get("fixed_labels"), batch.get("moving_labels"))


def hypermorph_step(network: Callable, loss_function: Callable, batch: Mapping[str, torch.Tensor],
                    generator: torch.Generator | None = None, distribution: str = "uniform",
                    concentration: float = 3.0) -> dict:
    """One HyperMorph training step, a ``step_fn`` of :class:`~monai_diffreg.engines.training.RegistrationTrainer`.

    As :func:`~monai_diffreg.engines.training.registration_step`, but the network is called with
    ``reg_weight``: ``batch["reg_weight"]`` ``(B,)``/``(B, 1)`` when the batch has one, else one draw
    per item from :func:`~monai_diffreg.losses.hypermorph.sample_reg_weight` (bind ``generator`` / ``distribution`` with
    :func:`functools.partial`). The loss reads the weight back from ``outputs["reg_weight"]``.
    """
    moving, fixed = batch["moving"], batch["fixed"]
    reg_weight = batch.get("reg_weight")
    if reg_weight is None:
        device = generator.device if generator is not None else moving.device
        reg_weight = sample_reg_weight(moving.shape[0], generator, distribution, concentration,
                                       device=device).to(moving.device)
    outputs = network(moving, fixed, reg_weight=reg_weight)
    return loss_function(outputs, fixed, moving, batch.get("fixed_labels"), batch.get("moving_labels"))


def energy_step(network: Callable, loss_function: Callable | None, batch: Mapping[str, torch.Tensor]) -> dict:
    """One step of a model that computes its own training energy: ``network(moving, fixed)`` in train mode returns
    the dict with ``"loss"`` (e.g. :class:`~monai_diffreg.mermaid.learned_metric.LearnedMetricVSVF`, whose energy
    needs an inner optimisation); ``loss_function`` is not used (None in the config)."""
    return network(batch["moving"], batch["fixed"])


def save_atomic(obj: Any, path: Path | str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def latest_checkpoint(output_dir: Path | str) -> Path | None:
    """The ``checkpoint_<iteration>.pt`` with the highest iteration in ``output_dir``, if any."""
    folder = Path(output_dir)
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint_*.pt") if (m := _CHECKPOINT.match(p.name))]
    return max(found)[1] if found else None


def export_weights(checkpoint: Path | str, destination: Path | str) -> int:
    """Write the network ``state_dict`` of a training checkpoint as a weights file (atomic).

    Nothing in a run depends on ``max_iterations`` (learning-rate schedules count iterations), so
    a run stopped after iteration ``N`` holds exactly the weights a run with ``max_iterations=N``
    ends with, and a long run's checkpoint can be shipped as ``models/model.pt``.

    Returns:
        the checkpoint's iteration.
    """
    model, iteration = _checkpoint_model(checkpoint, "export_weights")
    save_atomic(model, destination)
    return iteration


def export_stage_weights(checkpoints: Mapping[str, Path | str], destination: Path | str) -> dict[str, int]:
    """One weights file for a network made of separately trained stages (atomic).

    ``checkpoints`` maps each stage's attribute name in the composed network to its training
    checkpoint, e.g. ``{"affine": ..., "deformable": ...}`` for
    :class:`~monai_diffreg.networks.AffineThenDeformable`: the result is the composed network's
    ``state_dict`` (every key of stage ``s`` prefixed ``"s."``), loadable strictly.

    Returns:
        each stage's checkpoint iteration.
    """
    if not checkpoints:
        raise ValueError("export_stage_weights(): 'checkpoints' must name at least one stage")
    state, iterations = {}, {}
    for stage, checkpoint in checkpoints.items():
        model, iterations[stage] = _checkpoint_model(checkpoint, "export_stage_weights")
        state.update({f"{stage}.{key}": value for key, value in model.items()})
    save_atomic(state, destination)
    return iterations


def _checkpoint_model(checkpoint: Path | str, caller: str) -> tuple[dict[str, torch.Tensor], int]:
    """The network ``state_dict`` and iteration of a :class:`RegistrationTrainer` checkpoint."""
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"{caller}(): checkpoint not found: {str(checkpoint)!r}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise ValueError(f"{caller}(): {str(checkpoint)!r} is not a RegistrationTrainer checkpoint")
    return state["model"], int(state["iteration"])


class RegistrationTrainer:
    """Resumable (optionally distributed) training loop; see the module docstring.

    Args:
        network: the model; its parameters must be those given to ``optimizer``.
        loss_function: passed to ``step_fn``.
        optimizer: a :class:`torch.optim.Optimizer` over ``network``'s parameters.
        dataset: map-style dataset; item ``i`` must depend only on ``i``; items are dicts of tensors.
        max_iterations: total number of optimiser steps (including those before a resume).
        output_dir: where checkpoints, the log and ``model.pt`` go (created).
        batch_size: items per step and per process.
        device: where to train; with ``distributed=True`` a CUDA device becomes ``cuda:LOCAL_RANK``.
        checkpoint_interval: iterations between checkpoints (the last iteration always gets one).
        keep_checkpoints: how many recent checkpoints to keep (>= 1).
        log_interval: iterations between log lines.
        resume: continue from the newest checkpoint in ``output_dir`` (a fresh start if none).
        seed: torch seed of rank ``r`` is ``seed + r`` on a fresh start.
        lr_scheduler: optional scheduler stepped once per iteration (saved in checkpoints).
        grad_clip_norm: optional max gradient norm.
        step_fn: ``step_fn(network, loss_function, batch) -> dict`` with ``"loss"``.
        distributed: use ``torch.distributed`` (launch with ``torchrun``).
        num_workers: data-loader worker processes preparing the next batches in the background
            (0: in the training process). Items depend only on their index, so results do not change.
        num_threads: ``torch.set_num_threads`` for this process when given.
        initial_weights: optional network ``state_dict`` file (e.g. a bundle's ``models/model.pt``)
            loaded before the first iteration: fine-tuning. A run that resumes from a checkpoint
            ignores it (the checkpoint holds the weights).
    """

    def __init__(self, network: nn.Module, loss_function: Callable, optimizer: torch.optim.Optimizer,
                 dataset: Dataset, max_iterations: int, output_dir: str | Path, batch_size: int = 1,
                 device: str | torch.device = "cpu", checkpoint_interval: int = 100, keep_checkpoints: int = 3,
                 log_interval: int = 10, resume: bool = False, seed: int = 0,
                 lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, grad_clip_norm: float | None = None,
                 step_fn: Callable = registration_step, distributed: bool = False, num_workers: int = 0,
                 num_threads: int | None = None, initial_weights: str | Path | None = None) -> None:
        caller = "RegistrationTrainer"
        if initial_weights is not None and not Path(initial_weights).is_file():
            raise FileNotFoundError(f"{caller}(): 'initial_weights' is not a file: {initial_weights}")
        for name, value in (("max_iterations", max_iterations), ("batch_size", batch_size),
                            ("checkpoint_interval", checkpoint_interval), ("keep_checkpoints", keep_checkpoints),
                            ("log_interval", log_interval)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{caller}(): '{name}' must be an integer >= 1, got {value!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"{caller}(): 'num_workers' must be an integer >= 0, got {num_workers!r}")
        if not isinstance(resume, bool):
            raise ValueError(f"{caller}(): 'resume' must be True or False, got {resume!r}")
        self.network = network
        self.loss_function = loss_function
        self.optimizer = optimizer
        self.dataset = dataset
        self.max_iterations = max_iterations
        self.output_dir = Path(output_dir)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.checkpoint_interval = checkpoint_interval
        self.keep_checkpoints = keep_checkpoints
        self.log_interval = log_interval
        self.resume = resume
        self.seed = seed
        self.lr_scheduler = lr_scheduler
        self.grad_clip_norm = grad_clip_norm
        self.step_fn = step_fn
        self.distributed = distributed
        self.num_workers = num_workers
        self.num_threads = num_threads
        self.initial_weights = None if initial_weights is None else Path(initial_weights)
        self.iteration = 0
        self.rank, self.world_size = 0, 1
        self._owns_process_group = False
        self.logger = logging.getLogger(f"monai_diffreg.training.{id(self)}")

    # -- setup -------------------------------------------------------------------------------
    def _setup(self) -> nn.Module:
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if self.distributed:
            if not dist.is_initialized():
                self._owns_process_group = True
                dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
                torch.cuda.set_device(self.device)
        self.network.to(self.device)
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._setup_logging()
        torch.manual_seed(self.seed + self.rank)
        if self.resume:
            self._load_latest()
        if self.iteration == 0 and self.initial_weights is not None:
            self.network.load_state_dict(torch.load(self.initial_weights, map_location=self.device, weights_only=True))
            self.logger.info("fine-tuning: initial weights from %s", self.initial_weights)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(self.network, device_ids=ids)
        return self.network

    def _setup_logging(self) -> None:
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        formatter = logging.Formatter("%(asctime)s %(message)s")
        for handler in (logging.FileHandler(self.output_dir / "train_log.txt"), logging.StreamHandler(sys.stdout)):
            handler.setFormatter(formatter)
            self.logger.addHandler(handler)

    def _close_logging(self) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)

    # -- checkpoints -------------------------------------------------------------------------
    def _rng_states(self) -> list[torch.Tensor]:
        state = torch.get_rng_state()
        if not self.distributed:
            return [state]
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def _save_checkpoint(self) -> None:
        rng = self._rng_states()
        if self.rank != 0:
            return
        checkpoint = {
            "iteration": self.iteration,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "rng_states": rng,
            "world_size": self.world_size,
        }
        save_atomic(checkpoint, self.output_dir / f"checkpoint_{self.iteration:07d}.pt")
        found = sorted(self.output_dir.glob("checkpoint_*.pt"))
        for old in found[: max(0, len(found) - self.keep_checkpoints)]:
            old.unlink()

    def _load_latest(self) -> None:
        path = latest_checkpoint(self.output_dir)
        if path is None:
            self.logger.info("resume: no checkpoint in %s, starting from iteration 0", self.output_dir)
            return
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        if checkpoint["world_size"] != self.world_size:
            raise ValueError(
                f"RegistrationTrainer.run(): checkpoint {path} was written by {checkpoint['world_size']} process(es), "
                f"cannot resume with {self.world_size}"
            )
        self.network.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.iteration = int(checkpoint["iteration"])
        if self.lr_scheduler is not None and checkpoint["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        elif self.lr_scheduler is not None:
            self._fast_forward_scheduler()
        torch.set_rng_state(checkpoint["rng_states"][self.rank])
        self.logger.info("resumed from %s at iteration %d", path, self.iteration)

    def _fast_forward_scheduler(self) -> None:
        """Step a schedule added to a run that had none to the checkpoint's iteration.

        The run so far used the optimiser's base learning rate, so this equals a run that had the
        schedule from the start as long as the schedule kept that rate up to here (e.g. a
        ``MultiStepLR`` whose first milestone is later); otherwise it says so in the log.
        """
        base = [group["lr"] for group in self.optimizer.param_groups]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step", category=UserWarning)
            for _ in range(self.iteration):
                self.lr_scheduler.step()
        now = [group["lr"] for group in self.optimizer.param_groups]
        self.logger.info("resume: the checkpoint has no learning-rate schedule; the schedule was stepped to "
                         "iteration %d (learning rate %s)", self.iteration, now)
        if now != base:
            self.logger.warning("resume: the schedule already changed the learning rate before iteration %d "
                                "(%s -> %s): this run differs from one with the schedule from the start",
                                self.iteration, base, now)

    # -- loop --------------------------------------------------------------------------------
    def _indices(self, iteration: int) -> range:
        first = (iteration * self.world_size + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def _batches(self):
        """Batches of iterations ``self.iteration .. max_iterations - 1`` of this rank, in order."""
        indices = [i for t in range(self.iteration, self.max_iterations) for i in self._indices(t)]
        if self.num_workers == 0:
            batches = (default_collate([self.dataset[i] for i in self._indices(t)])
                       for t in range(self.iteration, self.max_iterations))
        else:
            batches = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, num_workers=self.num_workers)
        for batch in batches:
            yield {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _all_finite(self, terms: Mapping[str, torch.Tensor]) -> bool:
        finite = all(bool(torch.isfinite(v).all()) for v in terms.values() if isinstance(v, torch.Tensor))
        finite = finite and all(bool(torch.isfinite(p.grad).all()) for p in self.network.parameters() if p.grad is not None)
        if self.distributed:
            flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item() == 1.0)
        return finite

    def run(self) -> Path | None:
        """Train to ``max_iterations``; returns the path of ``model.pt`` (rank 0) or None."""
        model = self._setup()
        try:
            model.train()
            tic = time.perf_counter()
            for batch in self._batches():
                self.optimizer.zero_grad(set_to_none=True)
                terms = self.step_fn(model, self.loss_function, batch)
                terms["loss"].backward()
                if not self._all_finite(terms):
                    values = {k: float(v.detach().mean()) for k, v in terms.items() if isinstance(v, torch.Tensor)}
                    raise FloatingPointError(
                        f"RegistrationTrainer.run(): non-finite loss or gradient at iteration {self.iteration + 1} "
                        f"(terms: {values}); training stopped, nothing saved after the last checkpoint in {self.output_dir}"
                    )
                if self.grad_clip_norm is not None:
                    nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip_norm)
                self.optimizer.step()
                if self.lr_scheduler is not None:
                    self.lr_scheduler.step()
                self.iteration += 1
                if self.iteration % self.log_interval == 0 or self.iteration == self.max_iterations:
                    seconds = (time.perf_counter() - tic) / self.log_interval
                    text = " ".join(f"{k}={float(v.detach().mean()):.5g}" for k, v in terms.items()
                                    if isinstance(v, torch.Tensor) and v.numel() == 1)
                    self.logger.info("iteration %d/%d %s s/it=%.3f", self.iteration, self.max_iterations, text, seconds)
                    tic = time.perf_counter()
                if self.iteration % self.checkpoint_interval == 0 or self.iteration == self.max_iterations:
                    self._save_checkpoint()
            if self.rank == 0:
                final = self.output_dir / "model.pt"
                save_atomic(self.network.state_dict(), final)
                self.logger.info("saved final weights to %s", final)
                return final
            return None
        finally:
            self._close_logging()
            if self._owns_process_group and dist.is_initialized():
                dist.barrier()  # no rank tears down while another still talks to the store
                # Free the DDP wrapper while the process group is still registered: if its reducer
                # dropped the last reference, the group's destructor would join gloo's worker threads
                # with the GIL held while a worker frees a tensor and needs the GIL (a hang at exit,
                # seen in CI); destroy_process_group releases the GIL when it destroys the group.
                del model
                gc.collect()
                dist.destroy_process_group()

