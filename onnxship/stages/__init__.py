"""The stages of `onnxship run`, one module each, and their plan.

    plan.py      plan(cfg): the ordered stages of a run (read this to know what `run` does)
    base.py      Stage (inputs, outputs, config, produce), Run, BundleOnnx
    runner.py    run_plan: resolve, reuse or run, record (the one runner)
    config.py    PipelineConfig and load_config
    data.py      a user's own model and data; the bundle's data/*.npz
    train.py  prune.py  distill.py  export.py  quantize.py  fp16.py  search.py  eval.py
    bench.py  manifest.py

This package imports nothing here, so that `onnxship.stages.base` can be imported alone.
"""
