"""The quality benchmark: fine-tuning at equal trainable-parameter budgets, hf_rpg (delta mode)
against PEFT's peers (``python -m benchmarks quality``; see ``benchmarks/README.md``).

``protocol`` (the recipe), ``tasks`` (data and the pretrained ViT), ``methods`` (each method's
model), ``training`` (one run), ``results`` (the resumable results file), ``runner`` (a task's
protocol), ``report`` (the markdown report and plots), ``record`` (machine and commits);
``__main__`` holds the command line.
"""
