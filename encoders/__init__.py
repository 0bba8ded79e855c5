"""Pretrained trunks of every supported family, seen one way. Import each name from its module:
:mod:`encoders.trunks` (one interface over transformers' and timm's models), :mod:`encoders.loading`
(loading a trunk, reading its architecture, the absent-weights error), :mod:`encoders.lora` (LoRA
through peft), :mod:`encoders.adapters` (block adapters), :mod:`encoders.tuning` (what trains, and
the frozen weights' dtype), :mod:`encoders.pyramids` (the necks over a ViT's taps),
:mod:`encoders.rules` (the rules of an encoder's settings) and :mod:`encoders.checks` (a config
against the checkpoint's architecture)."""
