"""The fine-tuning loop (``s2s-ft-train``, ``run_seq2seq.py``; the flags are s2s_ft/cli/train.py).

Data order and corruption are pure functions of (seed, micro-batch counter): the batch order of epoch e is a
permutation seeded by (seed, e) (s2s_ft/data/batching.py) and the packing of micro-batch c draws from a generator seeded by
(seed, c). With ``--objective mass`` the examples are monolingual sentences that become (masked sentence, fragment)
pairs just before packing, drawing from that same generator (s2s_ft/training/objectives.py, mass_objective/). A resumed run
therefore needs only the step counter, the optimizer/scheduler state and the dropout RNG to continue exactly where it
stopped (s2s_ft/training/rundir.py). Under ``torchrun`` every rank packs the same global micro-batch and trains on its own rows
(s2s_ft/distributed.py), so N ranks at per-device batch b follow 1 process at batch N*b.

With ``--eval_file`` the live model decodes a fixed dev sample every ``--eval_steps`` (s2s_ft/training/dev_eval.py); the
scores go to eval_log.jsonl and the best model so far to ``output_dir/best/``. Evaluation puts every RNG state back,
so it does not change what is trained. At the end, the logs are plotted to training_curves.png.

Layout: ``start_run`` builds everything the loop needs (a ``Run``), ``train`` is the loop, ``train_step`` one
optimizer step, ``LogWindow`` the train_log.jsonl records, ``save_and_evaluate`` the checkpoints and dev scores.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from s2s_ft.data.answers import uses_span
from s2s_ft.data.batching import TokenBudgetSampler, micro_batch
from s2s_ft.data.packing import Packer, SpecialIds
from s2s_ft.data.reading import load_tokenizer, special_ids
from s2s_ft.distributed import World
from s2s_ft.errors import TrainingStopped, UsageError
from s2s_ft.model import checkpoint
from s2s_ft.model.precision import AUTOCAST_DTYPES
from s2s_ft.training import lora, rundir
from s2s_ft.training.config import TrainingConfig
from s2s_ft.training.dev_eval import DevEvaluator
from s2s_ft.training.loss import seq2seq_loss
from s2s_ft.training.memory import HeapTrimmer
from s2s_ft.training.objectives import (
    TrainingData,
    checkpoint_settings,
    training_examples,
)
from s2s_ft.training.optim import make_optimizer
from s2s_ft.training.restart import run_identity
from s2s_ft.training.rng import restore_rng, rng_state
from s2s_ft.training.time_budget import TimeBudget

log = logging.getLogger("s2s_ft")


@dataclass
class Run:
    """What the loop works with: the model and its optimizer, the data and how it is batched, where things go."""
    config: TrainingConfig
    world: World
    model: torch.nn.Module
    tokenizer: object
    hf_config: dict
    settings: dict  # s2s_ft_settings.json of every checkpoint
    data: TrainingData
    packer: Packer
    sampler: Optional[TokenBudgetSampler]  # None: fixed-size micro-batches of global_batch examples
    global_batch: int  # examples of one fixed-size micro-batch, all ranks together
    optimizer: torch.optim.Optimizer = None
    scheduler: object = None
    scaler: torch.amp.GradScaler = None
    evaluator: Optional[DevEvaluator] = None
    identity: dict = field(default_factory=dict)  # what each checkpoint records about this run (s2s_ft/training/restart.py)
    step: int = 0
    planned_steps: int = 0  # the schedule's last step: --num_training_steps, or less under --max_train_minutes
    budget: Optional[TimeBudget] = None  # --max_train_minutes
    bad_streak: int = 0  # consecutive steps with a non-finite loss or gradient
    last_saved: Optional[str] = None
    forward: object = None  # the model, or its torch.compile'd forward

    def save(self, path: str, training_state: Optional[dict] = None, extra_files: Optional[dict] = None) -> None:
        model, write_more, c = self.model, None, self.config
        if c.lora_rank:  # the merged model as the checkpoint, the adapters beside it (s2s_ft/training/lora.py)
            model = lora.merged_copy(self.model)
            training_state = None if training_state is None else {**training_state,
                                                                   "trainable": lora.trainable_state(self.model)}

            def write_more(directory: str) -> None:
                lora.save_adapter(self.model, c.lora_rank, c.lora_alpha, c.lora_dropout,
                                  os.path.join(directory, lora.ADAPTER_DIR))
        rundir.save_training_checkpoint(path, model, c.model_type, self.hf_config, self.tokenizer,
                                        self.settings, training_state, extra_files, write_more)


# ---------------------------------------------------------------------------------------------------- set-up
def load_model(config: TrainingConfig):
    """(tokenizer, model, hf_config, special ids) from --model_name_or_path / --config_name and the tokenizer."""
    tokenizer = load_tokenizer(config.tokenizer_name)
    model, info = checkpoint.load_pretrained(
        config.model_type, config.model_name_or_path, config_name=config.config_name,
        min_positions=config.max_source_seq_length + config.max_target_seq_length, log=log,
        head_init=config.fresh_head_init, dropout=config.dropout, copy_mechanism=config.copy_mechanism,
        answer_type=uses_span(config.answer_encoding))
    hf_config = info["hf_config"]
    if info["answer_type_added"]:
        log.info("answers marked in the source get a token type of their own: row %d of the token-type embeddings, "
                 "new (a copy of row %d)", hf_config[checkpoint.ANSWER_TYPE_KEY], hf_config[checkpoint.ANSWER_TYPE_KEY] - 1)
    source_type, target_type = checkpoint.default_segment_ids(config.model_type, hf_config)
    special = special_ids(tokenizer, source_type, target_type, checkpoint.answer_segment_id(hf_config))
    if special.vocab_size > model.config.vocab_size:
        raise UsageError(f"tokenizer {config.tokenizer_name} has {special.vocab_size} tokens but the model's "
                         f"vocabulary has {model.config.vocab_size}")
    special = SpecialIds(**{**asdict(special), "vocab_size": model.config.vocab_size})
    return tokenizer, model, hf_config, special


def plan_batches(config: TrainingConfig, data: TrainingData, world: World):
    """(token-budget sampler or None, global micro-batch size, examples per optimizer step, optimizer steps): the
    steps are ``num_training_steps``, or come from ``num_training_epochs`` when it is not given."""
    global_batch = config.per_device_train_batch_size * world.size
    per_step = global_batch * config.gradient_accumulation_steps
    sampler = None
    if config.max_tokens_per_batch:
        sampler = TokenBudgetSampler(data.lengths, config.max_tokens_per_batch, config.seed)
        if sampler.over_budget:
            log.warning("%d examples are longer than --max_tokens_per_batch %d packed; each is a batch of its own",
                        sampler.over_budget, config.max_tokens_per_batch)
        batches_per_epoch = len(sampler.epoch(0))
        per_step = len(data.examples) / batches_per_epoch * config.gradient_accumulation_steps  # on average
        if config.num_training_steps <= 0:
            return sampler, global_batch, per_step, max(1, math.ceil(
                config.num_training_epochs * batches_per_epoch / config.gradient_accumulation_steps))
    if config.num_training_steps <= 0:
        return sampler, global_batch, per_step, max(1, math.ceil(
            config.num_training_epochs * len(data.examples) / per_step))
    return sampler, global_batch, per_step, config.num_training_steps


def start_run(config: TrainingConfig, world: World) -> Run:
    """Everything the loop needs, resumed from the latest checkpoint of --output_dir if there is one."""
    os.makedirs(config.output_dir, exist_ok=True)
    if world.is_main:
        rundir.remove_stale_temporaries(config.output_dir)
    world.barrier()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    tokenizer, model, hf_config, special = load_model(config)
    if not world.is_main:
        world.barrier()  # rank 0 tokenises (and writes the cache) first
    data = training_examples(config, tokenizer, special)
    if world.is_main:
        world.barrier()
    mask_prob = 1.0 - config.random_prob - config.keep_prob
    packer = Packer(config.fine_tune, special, config.target_mask_prob,
                    corruption=(mask_prob, config.random_prob, config.keep_prob))
    sampler, global_batch, per_step, steps = plan_batches(config, data, world)
    config = config.replace(num_training_steps=steps)  # resolved (from the epochs if it was not given)
    run = Run(config, world, model, tokenizer, hf_config, checkpoint_settings(config, special), data, packer, sampler,
              global_batch)
    if config.lora_rank:
        base = os.path.join(config.output_dir, lora.BASE_DIR)
        if world.is_main and not os.path.isdir(base):  # what the adapters are relative to, before any step
            rundir.save_training_checkpoint(base, model, config.model_type, hf_config, tokenizer, run.settings)
        lora.add_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout)
    model.to(config.device)
    world.broadcast_model(model)  # same seed, same weights already; this makes sure of it
    if config.eval_file:
        rng = rng_state()  # building it (tokenising, a trial scoring) must not move the dropout RNG
        run.evaluator = DevEvaluator(config, model, tokenizer, special, run.settings, save_best=lambda path, files:
                                     run.save(path, extra_files=files))
        restore_rng(rng)
    if world.active:  # dropout: one stream per rank (a resumed run restores each rank's own state below)
        random.seed(config.seed + world.rank)
        torch.manual_seed(config.seed + world.rank)
    run.optimizer, run.scheduler = make_optimizer(
        model, learning_rate=config.learning_rate, weight_decay=config.weight_decay, adam_epsilon=config.adam_epsilon,
        num_warmup_steps=config.num_warmup_steps, num_training_steps=config.num_training_steps)
    run.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
    run.identity = run_identity(config, world.size)
    resume(run)
    log_start(run, per_step)
    model.gradient_checkpointing = config.gradient_checkpointing
    # Only the forward is compiled, through a separate handle: the optimizer, loss head, gradient all-reduce,
    # checkpoints (whose key names a compiled wrapper would prefix) and the dev decoder keep the plain module.
    run.forward = torch.compile(model, dynamic=True) if config.torch_compile else model
    model.train()
    return run


def resume(run: Run) -> None:
    """Continue from the latest complete checkpoint, if any; then the logs hold nothing after it, and this start is
    recorded (invocations.jsonl)."""
    config, world = run.config, run.world
    run.last_saved = rundir.latest_checkpoint(config.output_dir)
    run.planned_steps = config.num_training_steps
    if run.last_saved:
        state = rundir.resume_training(run.last_saved, run.identity, config.allow_changed_flags, run.model,
                                       run.optimizer, run.scheduler, run.scaler)
        run.step, run.bad_streak = state["step"], state.get("bad_streak", 0)
        if config.max_train_minutes and "planned_steps" in state:  # the budget's plan so far, within today's bound
            run.planned_steps = max(run.step, min(state["planned_steps"], config.num_training_steps))
        if run.evaluator:
            run.evaluator.resume()
    schedule = run.scheduler.lr_lambdas[0]  # these flags may have changed (--allow_changed_flags): today's values
    schedule.warmup, schedule.total = config.num_warmup_steps, run.planned_steps
    if world.is_main:
        for name in (rundir.TRAIN_LOG, rundir.EVAL_LOG):
            rundir.drop_log_records_after(os.path.join(config.output_dir, name), run.step)
        rundir.record_invocation(config, run.last_saved, run.step)
    if config.max_train_minutes:  # time already used: what the log holds up to the resumed step
        used = rundir.logged_seconds(os.path.join(config.output_dir, rundir.TRAIN_LOG)) if world.is_main else 0.0
        run.budget = TimeBudget(config.max_train_minutes, config.num_training_steps,
                                config.eval_steps if run.evaluator else None, run.step, world.broadcast_object(used))


def log_start(run: Run, per_step: float) -> None:
    config, budget = run.config, run.sampler is not None
    log.info("%d %s examples from %s; method %s; %d optimizer steps of %s examples (%s x %d accumulation); "
             "precision %s on %s; %.1fM parameters", len(run.data.examples), config.objective, config.train_file,
             config.fine_tune, config.num_training_steps, f"{per_step:.4g}" if budget else per_step,
             f"<= {config.max_tokens_per_batch} tokens" if budget else config.per_device_train_batch_size,
             config.gradient_accumulation_steps, config.precision, config.device, run.model.num_parameters() / 1e6)
    if config.max_train_minutes:
        log.info("--max_train_minutes %g: the decay ends where the budget does (planned: step %d; %.1f min used)",
                 config.max_train_minutes, run.planned_steps, run.budget.used_s / 60)
    if config.lora_rank:
        trained = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        log.info("LoRA rank %d (alpha %g): %.2fM of %.1fM parameters trained (%.1f %%)", config.lora_rank,
                 config.lora_alpha, trained / 1e6, run.model.num_parameters() / 1e6,
                 100 * trained / run.model.num_parameters())
    if budget:
        log.info("effective batch: one token-budget micro-batch (<= %d tokens, ~%.4g examples) shared by %d "
                 "device(s) x %d accumulation", config.max_tokens_per_batch, per_step / config.gradient_accumulation_steps,
                 run.world.size, config.gradient_accumulation_steps)
    else:
        log.info("effective batch: %d = %d per device x %d device(s) x %d accumulation", per_step,
                 config.per_device_train_batch_size, run.world.size, config.gradient_accumulation_steps)


# ---------------------------------------------------------------------------------------------------- the loop
def train(config: TrainingConfig, world: World) -> str:
    """Run (or resume) fine-tuning with resolved flags (s2s_ft/cli/train.py resolves them); returns the last checkpoint
    directory. Under torchrun every rank runs this."""
    if world.active and config.device.type == "cuda":
        config = config.replace(device=torch.device("cuda", world.local_rank))
    if not world.is_main:  # only rank 0 logs
        log.setLevel(logging.WARNING)
    run = start_run(config, world)
    config = run.config  # with the number of steps resolved
    progress = tqdm(total=run.planned_steps, initial=run.step, desc="train",
                    disable=None if world.is_main else True)
    window = LogWindow()
    trimmer = HeapTrimmer()
    while run.step < run.planned_steps:
        run.model.set_dropout(run.step >= config.dropout_from_step)  # a function of the step: resumes exactly
        grad_norm, bad_loss, bad, epoch = train_step(run, window)
        run.step += 1
        progress.update(1)
        rundir.hook_delay(rundir.STEP_DELAY_ENV)
        trimmer.after_step(run.step)  # resident memory back near what is live when it grew (memory.py: why)
        count_bad_step(run, bad, bad_loss, window)
        if run.step % config.logging_steps == 0 or run.step == run.planned_steps:
            record = window.record(run.step, epoch, run.scheduler.get_last_lr()[0], float(grad_norm))
            if run.budget:
                replan(run, record, progress)
            if world.is_main:
                rundir.append_record(os.path.join(config.output_dir, rundir.TRAIN_LOG), record)
            progress.set_postfix(loss=record["loss"], lr=f"{record['lr']:.2e}")
            window = LogWindow()
        save_and_evaluate(run, trimmer)
    progress.close()
    if world.is_main:
        rundir.write_curves(config.output_dir)
    return run.last_saved


def train_step(run: Run, window: "LogWindow"):
    """One optimizer step over --gradient_accumulation_steps micro-batches; returns (gradient norm, whether a loss
    was non-finite, whether the step was skipped as bad, epoch).

    Non-finite losses: fp16 keeps the GradScaler's path (backward, the scaler sees inf/NaN gradients and skips the
    update, lowering its scale); other precisions skip the optimizer step themselves. Either way the step counter and
    the LR schedule advance, so data order stays a function of (seed, step)."""
    config, scaler = run.config, run.scaler
    bad_loss, epoch = False, 0
    for micro in range(config.gradient_accumulation_steps):
        finite, epoch = micro_step(run, run.step * config.gradient_accumulation_steps + micro, window)
        bad_loss |= not finite
    run.world.sum_gradients(run.model.parameters())  # once per optimizer step, after accumulation
    scaler.unscale_(run.optimizer)
    # <= 0 means no clipping (HF, s2s-ft); the norm is still measured for the log and the non-finite check
    max_grad_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_grad_norm)
    bad = bad_loss or (not scaler.is_enabled() and not bool(torch.isfinite(grad_norm)))
    if scaler.is_enabled() or not bad:  # otherwise skipped: the model and the optimizer state stay as they were
        scaler.step(run.optimizer)  # fp16: skips the update itself when the gradients hold inf/NaN
        scaler.update()
    with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm, bad_loss, bad, epoch


def micro_step(run: Run, counter: int, window: "LogWindow") -> tuple[bool, int]:
    """Forward and backward of micro-batch ``counter``; returns (whether its loss was finite, its epoch)."""
    config, world = run.config, run.world
    if run.sampler is None:
        examples, epoch = micro_batch(run.data.examples, counter, run.global_batch, config.seed)
    else:
        indices, epoch = run.sampler(counter)
        examples = [run.data.examples[i] for i in indices]
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + counter)
    pairs = run.data.to_pairs(examples, generator)
    full = run.packer(pairs, generator)  # every rank packs the whole global micro-batch (same draws) ...
    batch, weight = world.shard(full)  # ... and keeps its own rows rank::world
    batch = batch.to(config.device)
    autocast_dtype = AUTOCAST_DTYPES[config.precision]
    with torch.autocast(config.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        hidden = run.forward(**batch.model_inputs())
        copy_inputs = dict(input_ids=batch.input_ids, copyable=batch.copyable)
        if world.active:  # sum over this rank's tokens / global count; the gradients are summed over ranks
            loss = seq2seq_loss(run.model, hidden, batch.labels, config.label_smoothing,
                                normalizer=float(full.num_predicted), **copy_inputs) * weight
        else:
            loss = seq2seq_loss(run.model, hidden, batch.labels, config.label_smoothing, **copy_inputs)
    reported = world.sum_scalar(loss.detach())  # the global mean, on every rank
    finite = bool(torch.isfinite(reported))
    if finite or run.scaler.is_enabled():
        run.scaler.scale(loss / config.gradient_accumulation_steps).backward()
    window.add(reported.item() if finite else None, full, pairs)
    return finite, epoch


def count_bad_step(run: Run, bad: bool, bad_loss: bool, window: "LogWindow") -> None:
    """Count consecutive bad steps; stop the run at --max_bad_steps."""
    if not bad:
        run.bad_streak = 0
        return
    run.bad_streak += 1
    window.skipped += 1
    log.warning("step %d: non-finite %s; optimizer step skipped (%d in a row, --max_bad_steps %d)", run.step,
                "loss" if bad_loss else "gradient norm", run.bad_streak, run.config.max_bad_steps)
    if run.bad_streak >= run.config.max_bad_steps:
        raise TrainingStopped(
            f"{run.bad_streak} consecutive steps (up to step {run.step}) had a non-finite loss or gradient; "
            f"stopped without saving. Last good checkpoint: {run.last_saved or 'none'} (try a lower "
            f"--learning_rate, --precision fp32, or look for bad examples)")


class LogWindow:
    """What train_log.jsonl records about the steps since the last record."""

    def __init__(self):
        self.loss, self.micro, self.tokens, self.padded_tokens, self.target_tokens, self.skipped = 0.0, 0, 0, 0, 0, 0
        self.start = time.perf_counter()

    def add(self, loss: Optional[float], batch, pairs) -> None:
        """One micro-batch: its global mean loss (None if not finite) and its packed size."""
        if loss is not None:
            self.loss += loss
            self.micro += 1
        self.tokens += batch.num_real_tokens
        self.padded_tokens += batch.input_ids.numel()
        self.target_tokens += sum(pair.num_predicted_targets for pair in pairs)

    def record(self, step: int, epoch: int, lr: float, grad_norm: float) -> dict:
        elapsed = time.perf_counter() - self.start
        record = {"step": step, "epoch": epoch, "loss": round(self.loss / self.micro, 5) if self.micro else None,
                  "lr": lr, "grad_norm": round(grad_norm, 4) if math.isfinite(grad_norm) else None,
                  "tokens_per_s": round(self.tokens / elapsed, 1),
                  "target_tokens_per_s": round(self.target_tokens / elapsed, 1),
                  "padding": round(1 - self.tokens / max(1, self.padded_tokens), 4),
                  "seconds": round(elapsed, 3)}  # wall time of the window (a dev evaluation in it included)
        if self.skipped:
            record["skipped_steps"] = self.skipped
        log.info("step %d: loss %s, lr %.3e, %.0f tokens/s (%.0f target tokens/s)", step,
                 "n/a" if record["loss"] is None else f"{record['loss']:.4f}", record["lr"],
                 record["tokens_per_s"], record["target_tokens_per_s"])
        return record


def replan(run: Run, record: dict, progress) -> None:
    """--max_train_minutes: move the schedule's last step to where the budget ends (time_budget.py: how). Rank 0
    plans and every rank follows; the record shows the plan."""
    run.budget.window(record["step"], record["seconds"])
    plan = run.world.broadcast_object(run.budget.replan(run.step, run.planned_steps))
    if plan != run.planned_steps:
        if abs(plan - run.planned_steps) * 50 >= run.planned_steps or plan == run.step:  # a 2 % move is news
            log.info("step %d: --max_train_minutes %g: %d steps planned (%.3f s per step, %.1f min used)", run.step,
                     run.config.max_train_minutes, plan, run.budget.seconds_per_step(), run.budget.used_s / 60)
        run.planned_steps = run.scheduler.lr_lambdas[0].total = plan
        progress.total = plan
        progress.refresh()
    record["planned_steps"] = plan


# ---------------------------------------------------------------------------------------------------- saving
def save_and_evaluate(run: Run, trimmer: HeapTrimmer) -> None:
    """Evaluate (--eval_steps) and save (--save_steps) when due, and always at the last step; the heap is trimmed
    before and after either (memory.py: why)."""
    config, world, step = run.config, run.world, run.step
    last = step == run.planned_steps
    save_due = step % config.save_steps == 0 or last
    eval_due = run.evaluator is not None and (step % config.eval_steps == 0 or last)
    if save_due or eval_due:
        poisoned = [name for name, p in run.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if poisoned:  # never write a checkpoint (or best/) that resume would pick over the last good one
            raise TrainingStopped(f"step {step}: parameter {poisoned[0]} is not finite; not saved. Last good "
                                  f"checkpoint: {run.last_saved or 'none'}")
        trimmer.trim_now()
    if eval_due:  # before the save: a run killed in between evaluates this step again when it resumes
        started = time.perf_counter()
        if world.is_main:  # rank 0 decodes the dev sample alone; the others wait at the barrier
            run.evaluator(step, after_batch=trimmer.if_grown)
            trimmer.trim_now()
        world.barrier()
        if run.budget:
            run.budget.evaluated(time.perf_counter() - started)
    if save_due:
        run.last_saved = rundir.checkpoint_path(config.output_dir, step)
        rng = {"per_rank": {r: s for states in world.gather_objects(rng_state()["per_rank"])
                            for r, s in states.items()}}  # every rank's RNG state, written by rank 0
        world.barrier()
        if world.is_main:
            run.save(run.last_saved, {
                "step": step, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(), "rng": rng, "bad_streak": run.bad_streak, "run": run.identity,
                "planned_steps": run.planned_steps})
            log.info("saved %s", run.last_saved)
            rundir.prune_checkpoints(config.output_dir, config.save_total_limit, keep=run.last_saved)
            trimmer.trim_now()
        world.barrier()
