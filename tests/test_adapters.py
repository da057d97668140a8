"""One base, many adapters: swapping, hot-swapping, mixed batches, merging, sizes, mismatches.

The adapters here are made in a second each (LoRA attached with random, non-zero B matrices and
saved), so every equality below compares different, non-trivial updates.
"""

import warnings

import pytest
import torch

from lora_lab.experiments import adapters
from lora_lab.runtime import profiles
from lora_lab.training import models

PROMPTS = [
    "what is the color of mipoka ?",
    "text : the pet of rabo is a cat . rabo lives in lima . question : where does rabo live ?",
    "write as a record : kelu likes to eat rice . the color of kelu is red .",
]
NAMES = ("recall", "extract", "format")
R = 4


@pytest.fixture(scope="module")
def profile():
    return profiles.get_profile("tiny")


def _make_adapter(profile, path, folder, seed, method="lora"):
    from peft import get_peft_model

    base, tokenizer = models.load_model_and_tokenizer(profile, method, model_path=path, for_training=False)
    config = models.lora_config(profile, r=R, alpha=2 * R)
    config.init_lora_weights = False  # random B as well as A: the update is not zero
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    models.save_adapter(model, tokenizer, folder)
    return str(folder)


@pytest.fixture(scope="module")
def adapter_dirs(profile, tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: _make_adapter(profile, tiny_model_path, root / name, seed) for seed, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def multi(profile, tiny_model_path, adapter_dirs):
    return adapters.load_specialists(profile, adapter_dirs, "lora", model_path=tiny_model_path)


def test_file_sizes_match_the_formula(profile, tiny_model_path, adapter_dirs):
    from transformers import AutoConfig

    predicted = adapters.predict_adapter_bytes(AutoConfig.from_pretrained(tiny_model_path), R, profile.lora_targets)
    # 4 layers x 7 matrices; r x (d_in + d_out) each
    assert predicted.n_tensors == 2 * 4 * 7
    for folder in adapter_dirs.values():
        measured = adapters.measure_adapter_file(folder)
        assert measured.dtypes == ("F32",)
        assert measured.params == predicted.params
        assert measured.tensor_bytes == predicted.tensor_bytes
        assert measured.file_bytes == predicted.tensor_bytes + measured.header_bytes
        assert measured.header_bytes < 0.1 * measured.file_bytes


def test_after_a_swap_each_adapter_equals_loading_it_alone(profile, tiny_model_path, adapter_dirs, multi):
    model, tokenizer = multi
    seen = []
    for name in (*NAMES, NAMES[0]):  # switch through all and back
        model.set_adapter(name)
        swapped = adapters.logits(model, tokenizer, PROMPTS)
        alone, tok = adapters.load_specialists(profile, {name: adapter_dirs[name]}, "lora", model_path=tiny_model_path)
        torch.testing.assert_close(swapped, adapters.logits(alone, tok, PROMPTS), rtol=0, atol=1e-5)
        seen.append(swapped)
    assert (seen[0] - seen[1]).abs().max() > 1e-2  # the adapters really differ
    with model.disable_adapter():
        base = adapters.logits(model, tokenizer, PROMPTS)
    assert (base - seen[0]).abs().max() > 1e-2  # and really change the base


def test_hotswapped_model_equals_a_fresh_load(profile, tiny_model_path, adapter_dirs):
    model, tokenizer = adapters.load_specialists(profile, {"default": adapter_dirs["recall"]}, "lora",
                                                 model_path=tiny_model_path)
    before = adapters.logits(model, tokenizer, PROMPTS)
    served = adapters.prepare_for_hotswap(model)
    adapters.hotswap(model, adapter_dirs["extract"], "default")
    fresh, tok = adapters.load_specialists(profile, {"default": adapter_dirs["extract"]}, "lora",
                                           model_path=tiny_model_path)
    after = adapters.logits(served, tokenizer, PROMPTS)
    torch.testing.assert_close(after, adapters.logits(fresh, tok, PROMPTS), rtol=0, atol=1e-5)
    assert (after - before).abs().max() > 1e-2


def test_a_failing_torch_compile_falls_back_to_the_uncompiled_model_with_one_line(
        profile, tiny_model_path, adapter_dirs, monkeypatch, capsys):
    """What 05 does on a GPU whose torch cannot compile a (4-bit) PeftModel: compile raising when called,
    as dynamo does at the first call, or when asked."""
    model, tokenizer = adapters.load_specialists(profile, {"default": adapter_dirs["recall"]}, "lora",
                                                 model_path=tiny_model_path)
    expected = adapters.logits(model, tokenizer, PROMPTS)

    def compiled_that_fails(module):
        def call(*args, **kwargs):
            raise RuntimeError("backend='inductor' raised:\nCompilationError: no kernel for Params4bit\n...")
        return call

    def compile_that_fails(module):
        raise RuntimeError("Dynamo is not supported on this Python")

    for broken in (compiled_that_fails, compile_that_fails):
        monkeypatch.setattr(torch, "compile", broken)
        served = adapters.prepare_for_hotswap(model, compile_model=True)
        out = capsys.readouterr().out
        assert served is model and out.count("\n") == 1 and out.startswith("torch.compile failed (RuntimeError")
        torch.testing.assert_close(adapters.logits(served, tokenizer, PROMPTS), expected, rtol=0, atol=1e-6)


def test_mixed_batch_gives_each_row_its_own_adapter(multi):
    model, tokenizer = multi
    names = [*NAMES, "__base__"]
    prompts = [*PROMPTS, PROMPTS[0]]
    mixed = adapters.logits(model, tokenizer, prompts, adapter_names=names)
    texts = adapters.generate_mixed(model, tokenizer, prompts, names, max_new_tokens=6)
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                own = adapters.logits(model, tokenizer, prompts)
                own_text = adapters.generate_mixed(model, tokenizer, prompts, None, max_new_tokens=6)
        else:
            model.set_adapter(name)
            own = adapters.logits(model, tokenizer, prompts)
            own_text = adapters.generate_mixed(model, tokenizer, prompts, None, max_new_tokens=6)
        torch.testing.assert_close(mixed[i], own[i], rtol=0, atol=1e-5)
        assert texts[i] == own_text[i]
    assert (mixed[0] - mixed[3]).abs().max() > 1e-2  # same prompt, different adapter, different output
    with pytest.raises(ValueError, match="one name per prompt"):
        adapters.generate_mixed(model, tokenizer, prompts, names[:2])


def test_merged_16bit_model_equals_the_unmerged_adapter(profile, tiny_model_path, adapter_dirs, multi, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = multi
    model.set_adapter("format")
    unmerged = adapters.logits(model, tokenizer, PROMPTS)
    merged, report = adapters.merge_to_standalone(profile, adapter_dirs["format"], tmp_path / "merged", tokenizer,
                                                  PROMPTS, method="lora", trained_model=model, adapter_name="format",
                                                  model_path=tiny_model_path)
    assert report.ok and report.dtype == "float32" and report.base == "16-bit"
    standalone = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # no peft involved
    assert not hasattr(standalone, "peft_config")
    torch.testing.assert_close(adapters.logits(standalone, tokenizer, PROMPTS), unmerged, rtol=0, atol=1e-4)


def test_merging_into_the_4bit_base_changes_outputs(profile, tiny_model_path, adapter_dirs):
    model, tokenizer = adapters.load_specialists(profile, {"format": adapter_dirs["format"]}, "qlora",
                                                 model_path=tiny_model_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, _ = adapters.merge_into_4bit(model, tokenizer, PROMPTS, "format")
    assert not [w for w in caught if "4-bit linear" in str(w.message)]  # measured here, so not repeated as a warning
    assert result.max_abs_logit_diff > 1e-3  # rounding the merged weight back to NF4 moves the logits
    assert result.weight_rel_error > 0.01


def test_cat_combination_is_the_weighted_sum_of_updates(multi):
    model, _ = multi
    weights = [1.0, 0.5, 0.25]
    adapters.combine(model, NAMES, weights, "mix", combination_type="cat")
    try:
        combined = adapters.delta_weight(model, "mix", "layers.0.self_attn.q_proj")
        expected = sum(w * adapters.delta_weight(model, n, "layers.0.self_attn.q_proj") for n, w in zip(NAMES, weights, strict=True))
        torch.testing.assert_close(combined, expected, rtol=1e-5, atol=1e-6)
    finally:
        model.set_adapter("recall")
        model.delete_adapter("mix")


def test_combine_refuses_to_replace_a_loaded_adapter_or_take_bad_weights(multi):
    model, _ = multi
    loaded = set(model.peft_config)
    for names, weights, new_name, message in [(NAMES, [1.0, 1.0, 1.0], NAMES[0], "is a loaded adapter"),
                                              (NAMES, [1.0, 1.0], "mix", "one finite weight per adapter"),
                                              (NAMES, [1.0, float("nan"), 1.0], "mix", "one finite weight"),
                                              (["nope"], [1.0], "mix", "adapters that are loaded")]:
        with pytest.raises(ValueError, match=message):
            adapters.combine(model, names, weights, new_name)
        assert set(model.peft_config) == loaded  # nothing deleted, nothing added
    adapters.combine(model, NAMES, [1.0, 1.0, 1.0], "mix")  # a re-run replaces its own combination
    adapters.combine(model, NAMES, [1.0, 0.5, 1.0], "mix")
    model.set_adapter(NAMES[0])
    model.delete_adapter("mix")


def test_adapter_for_another_architecture_fails_clearly(profile, tiny_model_path, adapter_dirs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    other = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(other).save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(adapters.AdapterMismatchError, match="only works on the base it was trained on"):
        adapters.load_specialists(profile, {"recall": adapter_dirs["recall"]}, "lora", model_path=tmp_path / "other")
    fewer = LlamaConfig(**{**other.to_dict(), "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                                       "head_dim": 32})
    AutoModelForCausalLM.from_config(fewer).save_pretrained(tmp_path / "fewer")
    tokenizer.save_pretrained(tmp_path / "fewer")
    with pytest.raises(adapters.AdapterMismatchError, match="does not have"):
        adapters.load_specialists(profile, {"recall": adapter_dirs["recall"]}, "lora", model_path=tmp_path / "fewer")


def test_a_cut_short_adapter_file_is_refused_in_one_line_before_peft_reads_it(multi, adapter_dirs, tmp_path):
    import shutil

    model, _ = multi
    cut = tmp_path / "cut"
    shutil.copytree(adapter_dirs["recall"], cut)
    weights = cut / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for call in (lambda: adapters.measure_adapter_file(cut), lambda: adapters.hotswap(model, cut, NAMES[0]),
                 lambda: adapters.attach_adapters(model, {"cut": cut})):
        with pytest.raises(ValueError, match="truncated or not a valid safetensors file"):
            call()
    assert "cut" not in model.peft_config


def test_train_specialist_trains_saves_and_caches(profile, tiny_model_path, tmp_path):
    recipe = adapters.SpecialistRecipe("format", max_steps=4, learning_rate=3e-3, r=R, alpha=2 * R, method="lora",
                                       n_train=64, optimizer="adamw_torch", gradient_checkpointing=False)
    run = adapters.train_specialist(profile, recipe, tmp_path, model_path=tiny_model_path)
    assert not run.cached and run.final_loss < run.first_loss
    assert run.adapter_bytes == (tmp_path / run.key / "adapter_model.safetensors").stat().st_size
    again = adapters.train_specialist(profile, recipe, tmp_path, model_path=tiny_model_path)
    assert again.cached and again.adapter_dir == run.adapter_dir and again.final_loss == run.final_loss
    other = adapters.SpecialistRecipe(**{**run.recipe, "max_steps": 5})
    assert other.key(profile) != recipe.key(profile)


def test_memory_report_measures_shared_base_and_merged_copies(profile, tiny_model_path, adapter_dirs, multi,
                                                               tmp_path):
    from transformers import AutoConfig

    model, tokenizer = multi
    merged, _ = adapters.merge_to_standalone(profile, adapter_dirs["recall"], tmp_path / "merged", tokenizer,
                                             PROMPTS, method="lora", trained_model=model, adapter_name="recall",
                                             model_path=tiny_model_path)
    size = adapters.predict_adapter_bytes(AutoConfig.from_pretrained(tiny_model_path), R, profile.lora_targets)
    report = adapters.memory_report(model, merged, size)
    assert report.n_adapters == len(NAMES)
    # fp32 LoRA matrices in memory: exactly what the formula says for three adapters.
    assert report.adapter_bytes == report.adapter_bytes_formula == len(NAMES) * size.tensor_bytes
    # The shared base is the merged model's size: the same fp32 weights, without the adapters.
    assert report.base_bytes == report.merged_model_bytes
    # Tensors of the merged model: its parameters (tied ones once) plus non-parameter buffers.
    assert report.merged_model_bytes_formula <= report.merged_model_bytes < 1.01 * report.merged_model_bytes_formula
    assert report.merged_dtype == "float32"
    assert report.shared_total < report.merged_total == len(NAMES) * report.merged_model_bytes
    assert f"{len(NAMES)} merged float32 models" in report.summary()


def test_score_table_scores_each_adapter_and_the_base_on_each_task(profile, multi):
    from datasets import Dataset

    from lora_lab.training import evaluate

    model, tokenizer = multi
    model.set_adapter("extract")
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]

    def answers_of(name: str, task: str) -> list[str]:
        budget = adapters.max_new_tokens_for(profile, task)
        if name == "__base__":
            with model.disable_adapter():
                return evaluate.generate(model, tokenizer, prompts, max_new_tokens=budget)
        model.set_adapter(name)
        return evaluate.generate(model, tokenizer, prompts, max_new_tokens=budget)

    # One held-out set per "task", whose reference answers are what one model says: that model must
    # score 1.0 on it, and a model answering differently must not.
    owners = {"recall": "__base__", "format": "format"}
    expected = {owner: answers_of(owner, task) for task, owner in owners.items()}
    evals = {task: Dataset.from_dict({"messages": [p + [{"role": "assistant", "content": a}]
                                                   for p, a in zip(prompts, expected[owner], strict=True)],
                                      "answer": expected[owner]})
             for task, owner in owners.items()}
    model.set_adapter("extract")
    table = adapters.score_table(model, tokenizer, evals, ["__base__", "format"], profile)
    assert model.active_adapter == "extract"  # restored
    assert set(table) == {"__base__", "format"} and all(set(row) == set(evals) for row in table.values())
    assert table["__base__"]["recall"] == 1.0 and table["format"]["format"] == 1.0
    differ = [a != b for a, b in zip(expected["__base__"], expected["format"], strict=True)]
    assert any(differ)  # the adapter changes answers (random B): the table must tell them apart
    assert table["format"]["recall"] == pytest.approx(1 - sum(differ) / len(differ))


def test_score_heatmap_shows_every_score_and_frames_the_specialists():
    from matplotlib.colors import to_hex

    from lora_lab.figures import adapter_plots

    scores = {"__base__": {"recall": 0.0, "format": 0.1}, "recall": {"recall": 0.9, "format": 0.0},
              "format": {"recall": 0.2, "format": 0.4}}
    bars = {"recall": 0.7, "format": 0.5}
    fig = adapter_plots.score_heatmap(scores, bars=bars)
    ax = fig.axes[0]
    assert ax.images[0].get_array().tolist() == [[0.0, 0.1], [0.9, 0.0], [0.2, 0.4]]
    assert [t.get_text() for t in ax.texts] == ["0%", "10%", "90%", "0%", "20%", "40%"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["base (no adapter)", "recall", "format"]
    frames = {(p.get_x() + 0.5, p.get_y() + 0.5): to_hex(p.get_edgecolor()) for p in ax.patches}
    assert frames == {(0, 1): "#ffffff", (1, 2): "#d55e00"}  # format (40%) is below its bar of 50%
    with pytest.raises(ValueError, match="same tasks"):
        adapter_plots.score_heatmap({"a": {"recall": 0.1}, "b": {"format": 0.1}})
    with pytest.raises(ValueError, match="shares, not percentages"):
        adapter_plots.score_heatmap({"a": {"recall": 90.0}})


def test_bars_pass_fail_and_are_not_judged_in_a_rehearsal(profile):
    bars = adapters.specialist_bars(profile)
    recipes = adapters.default_recipes(profile)
    assert set(bars) == set(recipes) == set(adapters.CPU_TASKS)
    good = {"__base__": {"recall": 0.0, "extract": 0.0, "format": 0.0},
            "recall": {"recall": 0.8, "extract": 0.1, "format": 0.0},
            "extract": {"recall": 0.5, "extract": 0.9, "format": 0.0},
            "format": {"recall": 0.0, "extract": 0.0, "format": 0.6}}
    verdicts = adapters.judge_specialists(good, bars)
    assert all(v.passed and v.judged for v in verdicts.values())
    assert verdicts["recall"].best_other == "extract" and verdicts["recall"].best_other_score == 0.5
    assert verdicts["recall"].base_score == 0.0
    adapters.assert_specialists_pass(verdicts, recipes)  # nothing raised
    # Below the bar, and above it but not far enough ahead of another specialist: both fail, by name.
    bad = {**good, "format": {"recall": 0.0, "extract": 0.0, "format": 0.3},
           "extract": {"recall": 0.75, "extract": 0.9, "format": 0.0}}
    verdicts = adapters.judge_specialists(bad, bars)
    assert [t for t, v in verdicts.items() if not v.passed] == ["recall", "format"]
    with pytest.raises(adapters.SpecialistBelowBarError, match=r"'format' scored 30%.*raise max_steps") as err:
        adapters.assert_specialists_pass(verdicts, recipes)
    assert "'recall' scored 80%" in str(err.value) and "'extract' scored" not in str(err.value)
    assert "FAILS" in verdicts["format"].line()
    rehearsal = adapters.judge_specialists(bad, bars, rehearsal=True)
    adapters.assert_specialists_pass(rehearsal, recipes)  # a rehearsal cannot learn: nothing is judged
    assert all("not judged in a rehearsal" in v.line() for v in rehearsal.values())
    t4 = profiles.get_profile("t4")
    t4_bars = adapters.specialist_bars(t4)
    assert set(t4_bars) == set(adapters.default_recipes(t4))
    # The t4 bars were never measured on a T4: a shortfall is a printed verdict, not an exception.
    short = {"__base__": {t: 0.0 for t in t4_bars}, **{t: {u: 0.0 for u in t4_bars} for t in t4_bars}}
    t4_verdicts = adapters.judge_specialists(short, t4_bars)
    assert not any(v.passed for v in t4_verdicts.values())
    adapters.assert_specialists_pass(t4_verdicts, adapters.default_recipes(t4))  # nothing raised
    assert all("SHORT of a bar no T4 run has measured" in v.line() for v in t4_verdicts.values())
    # The summary says what happened: never "all passed" when one fell short (05's Takeaways print it).
    assert adapters.verdicts_in_words(adapters.judge_specialists(good, bars)) == "all 3 passed their bars."
    assert adapters.verdicts_in_words(verdicts) == "'recall', 'format' fell short of their bars (1 of 3 passed)."
    assert "passed their bars" not in adapters.verdicts_in_words(t4_verdicts)
    assert adapters.verdicts_in_words(rehearsal).startswith("not judged in a rehearsal")
    with pytest.raises(ValueError, match="No row for the 'format' specialist"):
        adapters.judge_specialists({k: v for k, v in good.items() if k != "format"}, bars)


@pytest.mark.outcome
def test_each_cpu_specialist_passes_its_bar(profile):
    """The notebook's specialists, trained (or reused from the cache: the key covers every setting and
    the package's code) and judged exactly as notebook 05 does. An outcome test: `make outcomes-other-isa`
    runs it again under another instruction set with a fresh cache."""
    recipes = adapters.default_recipes(profile)
    runs = {task: adapters.train_specialist(profile, recipe) for task, recipe in recipes.items()}
    model, tokenizer = adapters.load_specialists(profile, {t: r.adapter_dir for t, r in runs.items()}, "lora")
    evals = adapters.held_out_sets(profile, list(runs))
    assert all(len(ds) == adapters.held_out_size(profile) == 100 for ds in evals.values())
    scores = adapters.score_table(model, tokenizer, evals, ["__base__", *runs], profile)
    print({adapter: {task: round(score, 3) for task, score in row.items()} for adapter, row in scores.items()})
    verdicts = adapters.judge_specialists(scores, adapters.specialist_bars(profile))
    adapters.assert_specialists_pass(verdicts, recipes)
    assert all(v.judged and v.passed for v in verdicts.values())
