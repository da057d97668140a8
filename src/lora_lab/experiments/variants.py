"""LoRA's variants head to head on the cpu profile's real model (notebook 07).

Plain LoRA, rsLoRA, DoRA, PiSSA, OLoRA, LoRA+, VeRA and full fine-tuning train the same layers of
SmolLM2-135M-Instruct on the course's text-to-SQL rows, for the same steps, batches and seeds, each at
the learning rate a small search picked for it. What each variant changes is written out in
`lora_lab.lessons.variants`; here they are trained through peft, as a learner would.

Why only the top layers. A step of the whole 135M model costs about 2.5 s on 2 cores, and a fair
comparison needs dozens of runs. So every variant adapts the same `TOP_LAYERS` decoder layers (all seven
linear layers in each), and the frozen layers below them are run once: `Trunk` stores the hidden
states that enter the first adapted layer for every training and held-out row, and `FrozenTrunkLM`
trains on top of them. That is exact, not an approximation: nothing below the adapted layers changes,
so their outputs are the same in every step of every run. peft's `layers_to_transform` gives the same
model; full fine-tuning here means every weight of those layers.

Each run is scored on the held-out rows by the lesson's teacher-forced pass (`lessons.sft.
loss_and_greedy_match`: loss per answer token, and whether greedy decoding reproduces the answer); the
run each variant keeps (its best learning rate, first seed) is also scored by real generation on the
whole model (`training.evaluate.exact_match`: exact and execution match), saved (adapter file size),
merged (merged against unmerged outputs) and measured for one step's memory on the whole model
(`estimation.memory.measure_step`). Results are cached like the rank sweep's (`rank.cached`).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from lora_lab.lessons import sft, verdicts
from lora_lab.lessons.sft import IGNORE_INDEX

__all__ = ["PLANS", "VARIANTS", "FrozenTrunkLM", "Trunk", "Variant", "VariantPlan", "WholeModel", "head_to_head",
           "qlora_trials", "t4_head_to_head", "t4_planned_runs", "verdicts_against"]

#: The linear layers every LoRA-family variant adapts in each of the top layers (SmolLM2 is a Llama).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Variant:
    """One method of notebook 07: how peft is asked for it, and the learning rates its search tries."""

    name: str  # the course's label ("LoRA", "DoRA", ...)
    lrs: tuple[float, ...]  # the learning rates of its search (peak, linear warmup then decay)
    kind: str = "lora"  # "lora" (peft LoraConfig), "vera" (peft VeraConfig) or "full" (every weight of the layers)
    options: tuple[tuple[str, object], ...] = ()  # extra LoraConfig fields, e.g. (("use_dora", True),)
    loraplus_ratio: float | None = None  # LoRA+: B's learning rate over A's (peft.optimizers.create_loraplus_optimizer)
    paper: str = ""  # where the method comes from


#: The eight methods, each with three learning rates around where it trains best here (r=8, alpha 16).
VARIANTS = (
    Variant("LoRA", (3e-3, 1e-2, 3e-2), paper="Hu et al. 2021, arXiv 2106.09685"),
    Variant("rsLoRA", (3e-3, 1e-2, 3e-2), options=(("use_rslora", True),),
            paper="Kalajdzievski 2023, arXiv 2312.03732"),
    Variant("DoRA", (3e-3, 1e-2, 3e-2), options=(("use_dora", True),), paper="Liu et al. 2024, arXiv 2402.09353"),
    Variant("PiSSA", (3e-3, 1e-2, 3e-2), options=(("init_lora_weights", "pissa"),),
            paper="Meng et al. 2024, arXiv 2404.02948"),
    Variant("OLoRA", (1e-3, 3e-3, 1e-2), options=(("init_lora_weights", "olora"),),
            paper="Büyükakyüz 2024, arXiv 2406.01775"),
    Variant("LoRA+", (1e-3, 3e-3, 1e-2), loraplus_ratio=16.0, paper="Hayou et al. 2024, arXiv 2402.12354"),
    Variant("VeRA", (1e-1, 3e-1, 1.0), kind="vera", paper="Kopiczko et al. 2024, arXiv 2310.11454"),
    Variant("full", (1e-3, 3e-3, 1e-2), kind="full", paper="every weight of the same layers"),
)


@dataclass(frozen=True)
class VariantPlan:
    """What the head-to-head runs on a profile (the cpu plan fits notebook 07's budget on 2 cores)."""

    top_layers: int  # decoder layers adapted, counted from the top; the ones below are the frozen trunk
    rank: int  # r of every LoRA-family variant
    alpha: float  # lora_alpha (scale alpha / r; rsLoRA alpha / sqrt(r))
    vera_rank: int  # VeRA's r: its shared random matrices are r x d, and it trains r + d_out numbers a layer
    steps: int  # optimizer steps per run
    batch_size: int  # rows per step
    n_train: int  # training rows (their trunk states are computed once)
    n_eval: int  # held-out rows: loss and greedy match for every run
    n_generate: int  # held-out rows scored by generation for each variant's kept run
    seeds: int  # seeds of each variant at its chosen learning rate (lessons.verdicts needs 3)
    warmup_steps: int = 3
    max_new_tokens: int = 40  # the longest reference query is 30 tokens (the cpu profile's max_new_tokens)
    threads: int | None = None  # torch threads (None: torch's default, both cores)


PLANS = {
    "cpu": VariantPlan(top_layers=1, rank=8, alpha=16.0, vera_rank=256, steps=12, batch_size=8, n_train=96,
                       n_eval=32, n_generate=12, seeds=3),
}


def run_layers(layers, rotary: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Llama decoder `layers` on right-padded hidden states `h`: the causal mask alone keeps every real token from
    seeing the padding, which comes after it."""
    positions = torch.arange(h.shape[1]).unsqueeze(0)
    cos_sin = rotary(h, position_ids=positions)
    for layer in layers:
        h = layer(h, attention_mask=None, position_ids=positions, position_embeddings=cos_sin)
    return h


class FrozenTrunkLM(nn.Module):
    """The top of a causal LM, trained on the stored outputs of its frozen lower layers.

    `forward(input_ids, attention_mask, labels)` looks each row up in `states` (the hidden states that
    enter the first adapted layer, keyed by the row's tokens), runs `layers`, the final norm and the
    head, and returns `.loss` (mean cross-entropy over the answer tokens: the head runs only at those
    positions, as the loss needs nothing else) or, without labels, `.logits`. Rows are right-padded, so
    the causal mask alone keeps every real token from seeing the padding.
    """

    def __init__(self, layers: nn.ModuleList, norm: nn.Module, lm_head: nn.Module, rotary: nn.Module,
                 states: dict[tuple[int, ...], torch.Tensor]):
        super().__init__()
        self.layers = layers
        self.norm, self.lm_head, self.rotary = norm, lm_head, rotary  # frozen, shared with the whole model
        self.states = states

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            key = tuple(ids[: int(mask.sum())].tolist())
            if key not in self.states:
                raise KeyError("FrozenTrunkLM was given a row whose trunk states were never computed.")
            rows.append(self.states[key])
        h = torch.zeros(len(rows), input_ids.shape[1], rows[0].shape[-1])
        for i, state in enumerate(rows):
            h[i, : state.shape[0]] = state
        return self.norm(run_layers(self.layers, self.rotary, h))

    def forward(self, input_ids, attention_mask, labels=None, **_):
        h = self.hidden(input_ids, attention_mask)
        if labels is None:
            return SimpleNamespace(logits=self.lm_head(h), loss=None)
        logits, targets = self.answer_logits(h, labels)
        return SimpleNamespace(loss=nn.functional.cross_entropy(logits, targets), logits=None)

    def answer_logits(self, h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's logits at the positions that predict an answer token, and those tokens."""
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        return self.lm_head(h[:, :-1][scored]), targets[scored]

    @torch.no_grad()
    def loss_and_greedy_match(self, eval_set, pad_id: int, batch_size: int = 16) -> tuple[float, float]:
        """`lessons.sft.loss_and_greedy_match` (loss per answer token, greedy match), the head run only at
        the answer's positions (a fifth of the rows' tokens: the full logits would cost more than the layer)."""
        self.eval()
        total, count, matched = 0.0, 0, 0
        for start in range(0, len(eval_set), batch_size):
            rows = eval_set[start: start + batch_size]
            batch = sft.pad_right(rows["input_ids"], rows["labels"], pad_id)
            logits, targets = self.answer_logits(self.hidden(batch["input_ids"], batch["attention_mask"]),
                                                 batch["labels"])
            total += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            count += len(targets)
            right = logits.argmax(-1) == targets
            per_row = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
            matched += sum(bool(chunk.all()) for chunk in right.split(per_row))
        return total / count, matched / len(eval_set)


@dataclass
class Trunk:
    """SmolLM2 split at its adapted layers, with the frozen layers' outputs for every row the runs use."""

    model: nn.Module  # the whole model (fp32, frozen); its top layers are the pristine copies each run starts from
    tokenizer: object
    train_set: object  # tokenized rows (input_ids, labels) for training
    eval_set: object  # tokenized held-out rows
    eval_rows: object  # the held-out rows as chat data (for generation)
    split: int  # index of the first adapted layer
    states: dict = field(default_factory=dict)
    seconds: float = 0.0  # time spent computing the states

    @property
    def top(self) -> nn.ModuleList:
        return self.model.model.layers[self.split:]


def _states(model, split: int, dataset, tokenizer, batch_size: int = 16) -> dict:
    out = {}
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start: start + batch_size]
            batch = sft.pad_right(rows["input_ids"], rows["labels"], tokenizer.pad_token_id)
            h = run_layers(model.model.layers[:split], model.model.rotary_emb,
                           model.model.embed_tokens(batch["input_ids"]))
            for ids, state in zip(rows["input_ids"], h, strict=True):
                out[tuple(ids)] = state[: len(ids)].clone()
    return out


def load_trunk(profile, plan: VariantPlan, model_path: str | None = None) -> Trunk:
    """SmolLM2 (or `model_path`), the SQL rows tokenized as in training, and the trunk states of all of them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_lab.standins import smollm2
    from lora_lab.training import data, sft_data

    path = model_path or smollm2.ensure_model(verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    rows = data.course_sql_dataset(plan.n_train, plan.n_eval, seed=profile.seed)
    train_rows, eval_rows = data.normalise(rows["train"], "sql"), data.normalise(rows["test"], "sql")
    train_set, _ = sft_data.prepare_sft_data(tokenizer, train_rows, profile.max_length, verbose=False)
    eval_set, _ = sft_data.prepare_sft_data(tokenizer, eval_rows, profile.max_length, "eval", verbose=False)
    split = model.config.num_hidden_layers - plan.top_layers
    start = time.perf_counter()
    states = _states(model, split, train_set, tokenizer) | _states(model, split, eval_set, tokenizer)
    return Trunk(model, tokenizer, train_set, eval_set, eval_rows, split, states, time.perf_counter() - start)


def peft_config(variant: Variant, plan: VariantPlan, seed: int):
    """The peft config a learner would write for `variant` on these layers (None for full fine-tuning)."""
    from peft import LoraConfig, VeraConfig

    if variant.kind == "full":
        return None
    if variant.kind == "vera":
        return VeraConfig(r=plan.vera_rank, target_modules=list(TARGETS), projection_prng_key=seed,
                          save_projection=True)
    return LoraConfig(r=plan.rank, lora_alpha=plan.alpha, lora_dropout=0.0, target_modules=list(TARGETS),
                      **dict(variant.options))


class _Top(nn.Module):
    """What peft wraps: the adapted layers under the names a whole Llama gives them (model.layers.N)."""

    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers


def build(trunk: Trunk, variant: Variant, plan: VariantPlan, seed: int):
    """A fresh copy of the top layers with `variant` applied: (trainable module, peft model or None)."""
    torch.manual_seed(seed)
    layers = copy.deepcopy(trunk.top)
    top = _Top(layers)
    config = peft_config(variant, plan, seed)
    if config is None:
        for name, p in layers.named_parameters():
            p.requires_grad_(name.split(".")[-2] in TARGETS)  # the seven linear layers' weights, not the norms
        return top, None
    from peft import get_peft_model

    wrapped = get_peft_model(top, config)
    return wrapped, wrapped


def trainable_layers(module) -> nn.ModuleList:
    """The decoder layers inside `build`'s result (wrapped by peft or not)."""
    return module.base_model.model.layers if hasattr(module, "base_model") else module.layers


def optimizer_for(module, variant: Variant, lr: float):
    """AdamW over the trainable parameters; LoRA+ through peft's own optimizer (B at `ratio` x the rate of A)."""
    if variant.loraplus_ratio is not None:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(module, optimizer_cls=torch.optim.AdamW, lr=lr,
                                         loraplus_lr_ratio=variant.loraplus_ratio, weight_decay=0.0)
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


def lm_for(trunk: Trunk, module) -> FrozenTrunkLM:
    model = trunk.model
    return FrozenTrunkLM(trainable_layers(module), model.model.norm, model.lm_head, model.model.rotary_emb,
                         trunk.states)


def train_one(trunk: Trunk, variant: Variant, plan: VariantPlan, lr: float, seed: int) -> tuple[dict, object]:
    """Train `variant` at `lr` with `seed`; returns (its result row, the trained module)."""
    module, _ = build(trunk, variant, plan, seed)
    lm = lm_for(trunk, module)
    trained = sft.train_loop(lm, trunk.train_set, steps=plan.steps, lr=lr, batch_size=plan.batch_size,
                             pad_id=trunk.tokenizer.pad_token_id, warmup_steps=plan.warmup_steps, seed=seed,
                             optimizer=optimizer_for(module, variant, lr))
    loss, greedy = lm.loss_and_greedy_match(trunk.eval_set, trunk.tokenizer.pad_token_id)
    row = dict(variant=variant.name, lr=lr, seed=seed, eval_loss=loss, greedy_match=greedy,
               trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
               seconds_per_step=trained["seconds_per_step"], final_train_loss=trained["losses"][-1][1],
               losses=[list(step) for step in trained["losses"]])  # as the cache's JSON gives them back
    return row, module


class WholeModel:
    """The whole model with a run's top layers in place of its own, for as long as the `with` lasts."""

    def __init__(self, trunk: Trunk, module):
        self.trunk, self.layers = trunk, trainable_layers(module)

    def __enter__(self):
        model = self.trunk.model
        self.saved = model.model.layers
        model.model.layers = nn.ModuleList(list(self.saved[: self.trunk.split]) + list(self.layers))
        return model

    def __exit__(self, *exc):
        self.trunk.model.model.layers = self.saved


def generation_scores(trunk: Trunk, module, plan: VariantPlan) -> dict:
    """Exact and execution match by greedy generation on the whole model, and valid SQL."""
    from lora_lab.training import evaluate

    rows = trunk.eval_rows.select(range(min(plan.n_generate, len(trunk.eval_rows))))
    with WholeModel(trunk, module) as model, torch.no_grad():
        _, scored = evaluate.exact_match(model, trunk.tokenizer, rows, max_new_tokens=plan.max_new_tokens,
                                         batch_size=len(rows))
    return dict(evaluate.summary(scored), n_generated=len(rows))


def step_memory(trunk: Trunk, variant: Variant, plan: VariantPlan, seed: int) -> dict:
    """One training step of the whole model with `variant` on its top layers, by `estimation.memory.measure_step`."""
    from lora_lab.estimation import memory

    module, _ = build(trunk, variant, plan, seed)
    rows = trunk.train_set[: plan.batch_size]
    batch = sft.pad_right(rows["input_ids"], rows["labels"], trunk.tokenizer.pad_token_id)
    with WholeModel(trunk, module) as model:
        measured = memory.measure_step(model, batch, optimizer_for(module, variant, 1e-4))
    return dict(memory=measured.total, memory_gradients=measured.gradients,
                memory_optimizer=measured.optimizer_states, memory_activations=measured.activations)


def file_bytes(module, peft_model) -> int:
    """Bytes of what a learner would ship: peft's adapter file, or the trained weights for full fine-tuning."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        if peft_model is not None:
            peft_model.save_pretrained(tmp)
        else:
            trained = {n: p.detach().contiguous() for n, p in module.named_parameters() if p.requires_grad}
            save_file(trained, str(Path(tmp) / "model.safetensors"))
        return sum(f.stat().st_size for f in Path(tmp).rglob("*.safetensors"))


def merge_check(trunk: Trunk, module, peft_model) -> dict:
    """Merge the adapter into its layers (peft's merge_and_unload) and compare the outputs with the unmerged ones."""
    if peft_model is None:
        return dict(merges=None, merge_max_diff=None)
    lm = lm_for(trunk, module)
    rows = trunk.eval_set[:8]
    batch = sft.pad_right(rows["input_ids"], rows["labels"], trunk.tokenizer.pad_token_id)
    with torch.no_grad():
        before = lm(batch["input_ids"], batch["attention_mask"]).logits
        try:
            merged = copy.deepcopy(peft_model).merge_and_unload()
        except (ValueError, NotImplementedError, AttributeError) as err:
            return dict(merges=False, merge_max_diff=None, merge_error=str(err).splitlines()[0])
        after = lm_for(trunk, merged)(batch["input_ids"], batch["attention_mask"]).logits
    return dict(merges=True, merge_max_diff=(after - before).abs().max().item(),
                merge_scale=before.abs().max().item())


def measure_kept(trunk: Trunk, module, row: dict, plan: VariantPlan, variant: Variant) -> dict:
    """The run a variant keeps, measured whole: generation, adapter file, merge and one step's memory."""
    peft_model = module if hasattr(module, "base_model") else None
    row = dict(row)
    row.update(generation_scores(trunk, module, plan))
    row.update(file_bytes=file_bytes(module, peft_model))
    row.update(merge_check(trunk, module, peft_model))
    row.update(step_memory(trunk, variant, plan, row["seed"]))
    return row


def head_to_head(profile, plan: VariantPlan | None = None, *, variants: Sequence[Variant] = VARIANTS,
                 model_path: str | None = None, use_cache: bool = True, verbose: bool = True) -> dict:
    """Every variant's search, its seeds at the chosen rate, and its kept run measured whole.

    Returns:
        runs (every training run: variant, lr, seed, eval_loss, greedy_match, trainable, seconds_per_step,
        losses), kept ({variant: the measured row of its chosen rate, first seed}), chosen ({variant: lr}),
        plan, trunk_seconds, base (held-out loss and greedy match of the untouched model).
    """
    from lora_lab.experiments import rank

    plan = plan or PLANS[profile.name]
    key = dict(plan=asdict(plan), seed=profile.seed, max_length=profile.max_length,
               model=str(model_path or profile.model_id))
    trunk_box: dict = {}

    def trunk() -> Trunk:
        if "trunk" not in trunk_box:
            trunk_box["trunk"] = load_trunk(profile, plan, model_path)
            if verbose:
                print(f"trunk states of {len(trunk_box['trunk'].states)} rows in {trunk_box['trunk'].seconds:.1f} s")
        return trunk_box["trunk"]

    def cached(name: str, payload: dict, compute):
        row = rank.cached(f"variants-{name}", dict(key, **payload), compute, use_cache)
        if verbose and "variant" in row:
            print(f"{row['variant']:<7} lr {row['lr']:<7g} seed {row['seed']}  held-out loss {row['eval_loss']:.3f}  "
                  f"greedy match {row['greedy_match']:6.1%}  {row['seconds_per_step'] * 1000:5.0f} ms/step")
        return row

    with rank.torch_threads(plan.threads):
        def base_row():
            t = trunk()
            lm = FrozenTrunkLM(t.top, t.model.model.norm, t.model.lm_head, t.model.model.rotary_emb, t.states)
            loss, greedy = lm.loss_and_greedy_match(t.eval_set, t.tokenizer.pad_token_id)
            return dict(eval_loss=loss, greedy_match=greedy)

        base = cached("base", {}, base_row)
        runs, kept, chosen = [], {}, {}
        for v in variants:
            modules = {}

            def train(lr, seed, v=v, modules=modules):
                row, module = train_one(trunk(), v, plan, lr, seed)
                modules[(lr, seed)] = module
                return row

            searched = [cached("run", dict(variant=asdict(v), lr=lr, seed=profile.seed),
                               lambda lr=lr: train(lr, profile.seed)) for lr in v.lrs]
            best = min(searched, key=lambda r: r["eval_loss"])
            chosen[v.name] = best["lr"]

            def measure(v=v, best=best, modules=modules):
                if (best["lr"], best["seed"]) not in modules:  # the search came from the cache: train it again
                    train(best["lr"], best["seed"])
                return measure_kept(trunk(), modules[(best["lr"], best["seed"])], best, plan, v)

            kept[v.name] = cached("kept", dict(variant=asdict(v), lr=best["lr"]), measure)
            modules.clear()
            runs += searched
            runs += [cached("run", dict(variant=asdict(v), lr=best["lr"], seed=profile.seed + s),
                            lambda s=s, best=best: train(best["lr"], profile.seed + s)) for s in range(1, plan.seeds)]
    return dict(runs=runs, kept=kept, chosen=chosen, plan=asdict(plan), base=base,
                trunk_seconds=trunk_box["trunk"].seconds if trunk_box else None)


def config_on_layers(variant: Variant, plan: VariantPlan, seed: int, layers: list[int]):
    """`peft_config` restricted to `layers` of a whole model (peft's layers_to_transform)."""
    import dataclasses

    config = peft_config(variant, plan, seed)
    return None if config is None else dataclasses.replace(config, layers_to_transform=layers)


def qlora_trials(profile, plan: VariantPlan | None = None, *, variants: Sequence[Variant] = VARIANTS,
                 model_path: str | None = None, batch_size: int = 2, use_cache: bool = True) -> list[dict]:
    """Each variant on SmolLM2 with its linear weights in NF4 (bitsandbytes, fp32 compute), on the same top layers.

    For each: whether peft (or torch) accepts it, and if so how far the model's output at the start is from
    the NF4 base (an adapter should start at exactly zero), one step's memory (`measure_step`) and the time
    of a step, for `batch_size` rows of the training set.
    """
    from lora_lab.experiments import rank

    plan = plan or PLANS[profile.name]

    def compute():
        from transformers import AutoTokenizer

        from lora_lab.estimation import memory
        from lora_lab.standins import smollm2
        from lora_lab.training import data, sft_data

        path = str(model_path or smollm2.ensure_model(verbose=False))
        tokenizer = AutoTokenizer.from_pretrained(path)
        base = rank.load_base(path, nf4=True).requires_grad_(False)
        rows = data.normalise(data.course_sql_dataset(batch_size, 1, seed=profile.seed)["train"], "sql")
        tokenized, _ = sft_data.prepare_sft_data(tokenizer, rows, profile.max_length, verbose=False)
        batch = sft.pad_right(tokenized["input_ids"], tokenized["labels"], tokenizer.pad_token_id)
        layers = list(range(base.config.num_hidden_layers - plan.top_layers, base.config.num_hidden_layers))
        with torch.no_grad():
            reference = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = []
        for v in variants:
            model = copy.deepcopy(base)
            row = dict(variant=v.name)
            try:
                torch.manual_seed(profile.seed)
                if v.kind == "full":
                    for i in layers:
                        model.model.layers[i].requires_grad_(True)
                else:
                    from peft import get_peft_model

                    model = get_peft_model(model, config_on_layers(v, plan, profile.seed, layers))
            except (TypeError, ValueError, RuntimeError, NotImplementedError) as err:
                out.append(dict(row, runs=False, refusal=f"{type(err).__name__}: {str(err).splitlines()[0]}"))
                continue
            with torch.no_grad():
                start = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            opt = optimizer_for(model, v, 1e-4)
            measured = memory.measure_step(model, dict(batch), opt)
            began = time.perf_counter()
            model(**batch).loss.backward()
            opt.step()
            out.append(dict(row, runs=True, refusal=None, start_max_diff=(start - reference).abs().max().item(),
                            trainable=measured.trainable_params, memory=measured.total,
                            memory_activations=measured.activations, seconds_per_step=time.perf_counter() - began))
        return out

    return rank.cached("variants-qlora", dict(plan=asdict(plan), seed=profile.seed, batch=batch_size,
                                              variants=[asdict(v) for v in variants],
                                              model=str(model_path or profile.model_id)), compute, use_cache)


#: The variants the t4 path trains on the real model in 4 bits (QLoRA), one run each at the t4 profile's rate.
#: PiSSA is left out (peft refuses it on a 4-bit layer, `qlora_trials`), full fine-tuning too (a 4-bit weight
#: cannot train), and LoRA+ and VeRA to keep notebook 07 within its 20 minutes on a T4.
T4_VARIANTS = ("LoRA", "rsLoRA", "DoRA", "OLoRA")
T4_STEPS = 40  # optimizer steps of each t4 run, batch 4 without accumulation (notebook 02's t4 runs)
T4_RANK = 16  # the t4 profile's rank
T4_N_EVAL = 32  # held-out examples each t4 run is scored on


def variant(name: str) -> Variant:
    return next(v for v in VARIANTS if v.name == name)


def t4_planned_runs(profile) -> list:
    """The t4 path's runs as the memory estimator sees them (`gpu_runs.PlannedRun`), for preflight and t4-plan.

    The estimator knows LoRA's layers; DoRA's extra activations (measured on the CPU in `head_to_head`) are not in
    its estimate, which is why every run is checked again against free memory when it starts.
    """
    import dataclasses

    from lora_lab.estimation import gpu_runs

    runs = []
    for name in T4_VARIANTS:
        run = gpu_runs.sft_run("07", name, profile.replace(grad_accum=1), "qlora", rank=T4_RANK)
        runs.append(dataclasses.replace(run, steps=T4_STEPS, n_eval=T4_N_EVAL))
    return runs


def t4_head_to_head(profile, hw=None, *, model_path: str | None = None, verbose: bool = True) -> dict:
    """The t4 path: `T4_VARIANTS` trained with QLoRA through `training.train.sft`, each preflighted first.

    One seed each and the t4 profile's learning rate for all (no search: a T4's 20 minutes hold four runs), so
    `verdict` says no difference is measured; the rows have the same fields as `head_to_head`'s runs.
    """
    import dataclasses

    from lora_lab.estimation import gpu_runs
    from lora_lab.experiments import rank
    from lora_lab.standins import tiny
    from lora_lab.training import evaluate, models, train

    hw = hw or models.hardware_for(profile)
    path = str(model_path or tiny.resolve_model_path(profile.model_id))
    planned = t4_planned_runs(profile)
    runs, skipped, splits = [], [], None
    for name, run in zip(T4_VARIANTS, planned, strict=True):
        decision = gpu_runs.preflight(run, hw, verbose=verbose)
        if not decision.runs:
            skipped.append(decision.to_dict())
            continue
        run_profile = decision.apply(profile)
        model, tokenizer = train.load_model_and_tokenizer(run_profile, "qlora", hw=hw, model_path=path)
        if splits is None:
            splits, train_set, eval_set = rank.prepared_data(profile.replace(n_eval=T4_N_EVAL), tokenizer)
        options = dict(variant(name).options)
        lora = dataclasses.replace(models.lora_config(run_profile, r=T4_RANK), **options)
        with tempfile.TemporaryDirectory() as tmp:
            result = train.sft(model, tokenizer, train_set, run_profile, tmp, method="qlora", lora=lora,
                               max_steps=T4_STEPS, seed=profile.seed, hw=hw, verbose=False)
        tuned = result.model
        loss = evaluate.eval_loss(tuned, tokenizer, eval_set, profile.max_length)
        em, _ = evaluate.exact_match(tuned, tokenizer, splits["eval"], profile.max_new_tokens)
        row = dict(variant=name, lr=profile.learning_rate, seed=profile.seed, eval_loss=loss, exact_match=em,
                   trainable=sum(p.numel() for p in tuned.parameters() if p.requires_grad),
                   memory=result.metrics["peak_memory_bytes"],
                   seconds_per_step=result.metrics["train_runtime_s"] / max(1, result.metrics["global_step"]))
        if verbose:
            print(f"{name:<7} held-out loss {loss:.3f}  exact match {em:6.1%}  {row['trainable']:,} trainable")
        runs.append(row)
        del model, tuned, result
        gpu_runs.free_gpu_memory()
    return dict(runs=runs, skipped=skipped)


def verdicts_against(runs: Sequence[dict], reference: str = "LoRA", key: str = "eval_loss") -> dict:
    """{variant: `lessons.verdicts.Verdict` against `reference`} over their runs at the chosen rates (every seed)."""
    names = list(dict.fromkeys(r["variant"] for r in runs))
    ref = [r[key] for r in _at_chosen(runs, reference)]
    return {name: verdicts.compare(name, [r[key] for r in _at_chosen(runs, name)], reference, ref)
            for name in names if name != reference}


def _at_chosen(runs: Sequence[dict], name: str) -> list[dict]:
    """`name`'s runs at its chosen rate: the rate with more than one seed, else its best single run."""
    mine = [r for r in runs if r["variant"] == name]
    by_lr: dict[float, list[dict]] = {}
    for r in mine:
        by_lr.setdefault(r["lr"], []).append(r)
    repeated = [rows for rows in by_lr.values() if len({r["seed"] for r in rows}) > 1]
    if repeated:
        return repeated[0]
    return [min(mine, key=lambda r: r["eval_loss"])]


def runs_at_chosen(runs: Sequence[dict]) -> dict[str, list[dict]]:
    """{variant: its runs at its chosen rate, one per seed}, in the order the variants ran."""
    return {name: _at_chosen(runs, name) for name in dict.fromkeys(r["variant"] for r in runs)}


def search_table(runs: Sequence[dict], chosen: dict[str, float]) -> str:
    """Each variant's held-out loss at each learning rate it tried (first seed), its pick, and an edge warning."""
    lines = []
    for name in dict.fromkeys(r["variant"] for r in runs):
        first = min(r["seed"] for r in runs if r["variant"] == name)
        tried = sorted((r["lr"], r["eval_loss"]) for r in runs if r["variant"] == name and r["seed"] == first)
        pick = chosen.get(name, min(tried, key=lambda t: t[1])[0])
        cells = "  ".join(f"{'*' if lr == pick else ' '}{lr:<6g} {loss:.3f}" for lr, loss in tried)
        edge = len(tried) > 1 and pick in (tried[0][0], tried[-1][0])
        lines.append(f"{name:<7} {cells}" + ("   best at an edge of the search" if edge else ""))
    return "held-out loss by learning rate (* the rate kept)\n" + "\n".join(lines)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def results_table(kept: dict[str, dict], same_rate: dict[str, list[dict]]) -> str:
    """One row per variant: loss over its seeds, generation scores, parameters, file, merge, time and memory."""
    from lora_lab.runtime.units import MIB

    def pct(x):
        return "  n/a" if x is None else f"{x:5.0%}"

    head = (f"{'method':<7} {'lr':>6} {'loss (mean of seeds)':>21} {'exact':>6} {'exec':>6} {'trainable':>10} "
            f"{'file MiB':>9} {'merges':>12} {'ms/step':>8} {'step MiB':>9}")
    lines = [head]
    for name, row in kept.items():
        losses = [r["eval_loss"] for r in same_rate.get(name, [row])]
        spread = f"{_mean(losses):.3f} ± {(max(losses) - min(losses)) / 2:.3f}"
        size = f"{row['file_bytes'] / MIB:.2f}" if "file_bytes" in row else "n/a"
        merges = ("n/a" if row.get("merges") is None else
                  f"yes {row['merge_max_diff']:.0e}" if row["merges"] else "no")
        lines.append(f"{name:<7} {row['lr']:>6g} {spread:>21} {pct(row.get('exact_match')):>6} "
                     f"{pct(row.get('execution_match')):>6} {row['trainable']:>10,} "
                     f"{size:>9} {merges:>12} {row['seconds_per_step'] * 1000:>8.0f} "
                     f"{row['memory'] / MIB:>9.1f}")
    n = next(iter(kept.values())).get("n_generated")
    if n:
        lines.append(f"exact / exec: exact and execution match of generated SQL on {n} held-out rows (first seed); "
                     "merges: largest logit change after merge_and_unload")
    return "\n".join(lines)


def qlora_table(trials: Sequence[dict]) -> str:
    """`qlora_trials` as text: refusals in peft's (or torch's) words, else the start, memory and time of a step."""
    from lora_lab.runtime.units import MIB

    lines = [f"{'method':<7} {'on NF4':<8} {'start vs NF4 base':>18} {'trainable':>10} {'step MiB':>9} {'ms/step':>8}"]
    for t in trials:
        if not t["runs"]:
            lines.append(f"{t['variant']:<7} refused  {t['refusal'][:90]}")
            continue
        lines.append(f"{t['variant']:<7} {'trains':<8} {t['start_max_diff']:>18.2e} {t['trainable']:>10,} "
                     f"{t['memory'] / MIB:>9.1f} {t['seconds_per_step'] * 1000:>8.0f}")
    return "\n".join(lines)


def agreement_with_peft(runs: Sequence[dict], benchmark_rows: Sequence[dict]) -> dict:
    """Pairs of variants ordered the same way here (lower mean held-out loss) and in PEFT's benchmark (higher
    GSM8K accuracy, each variant's rank-32 run where PEFT has one), with a line per pair in `text`."""
    from lora_lab.experiments import peft_benchmark

    ours = {name: _mean([r["eval_loss"] for r in rows]) for name, rows in runs_at_chosen(runs).items()}
    theirs = peft_benchmark.peft_scores(benchmark_rows)
    # Means closer than the printed precision count as a tie (an ordering of means, not a verdict: section 2's
    # verdicts say which differences exceed the seed-to-seed spread).
    result = peft_benchmark.ordering_agreement(ours, theirs, higher_is_better=False, peft_higher_is_better=True,
                                               course_tol=5e-4)
    lines = [f"{p['a']:>6} vs {p['b']:<6} here {p['course_better'] or 'tie':<6} (loss {p['course'][0]:.3f} / "
             f"{p['course'][1]:.3f}), PEFT {p['peft_better'] or 'tie':<6} (accuracy {p['peft'][0]:.1%} / "
             f"{p['peft'][1]:.1%}): {p['verdict']}" for p in result["pairs"]]
    missing = ", ".join(result["only_course"])
    summary = (f"{len(result['agrees'])} of {len(result['pairs'])} pairs ordered the same way, "
               f"{len(result['disagrees'])} the other way" + (f"; PEFT has no result for {missing}" if missing else ""))
    return dict(result, text="\n".join(lines + [summary]), summary=summary + ".")


def takeaways(runs: Sequence[dict], kept: dict[str, dict], verdict_lines: dict, agreement: dict) -> list[str]:
    """The lesson's closing bullets, each computed from this run."""
    same_rate = runs_at_chosen(runs)
    means = {name: _mean([r["eval_loss"] for r in rows]) for name, rows in same_rate.items()}
    best = min(means, key=means.get)
    beaten = [v for v in verdict_lines.values() if v.measurable]
    lines = [f"- Lowest mean held-out loss: **{best}** ({means[best]:.3f}); plain LoRA {means.get('LoRA', float('nan')):.3f}."]
    lines += [f"- {v.line()}" for v in beaten]
    within = [name for name, v in verdict_lines.items() if v.spread is not None and not v.measurable]
    if within:
        lines.append(f"- Within the seed-to-seed spread of plain LoRA: {', '.join(within)}.")
    if any(v.spread is None for v in verdict_lines.values()):
        lines.append("- One seed per method on this profile: no difference between methods is measured.")
    if "DoRA" in kept and "LoRA" in kept:
        d, lo = kept["DoRA"], kept["LoRA"]
        lines.append(f"- DoRA's cost: {d['seconds_per_step'] / lo['seconds_per_step']:.2f}x LoRA's step time and "
                     f"{(d['memory'] - lo['memory']) / 2**20:+.1f} MiB per step, for {d['trainable'] - lo['trainable']:,} "
                     "more trainable numbers (its magnitudes).")
    if "VeRA" in kept and "LoRA" in kept:
        lines.append(f"- VeRA trains {kept['VeRA']['trainable']:,} numbers against LoRA's {kept['LoRA']['trainable']:,} "
                     f"({kept['LoRA']['trainable'] / kept['VeRA']['trainable']:.0f}x fewer).")
    lines.append(f"- Against PEFT's benchmark (Llama-3.2-3B, 5,000 steps, GSM8K): {agreement['summary']}")
    return lines
