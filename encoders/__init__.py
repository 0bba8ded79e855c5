"""Encoder trunks: one interface over transformers' and timm's DINOv3 / DINOv2 models, their
loading, and LoRA. Import from :mod:`dinov3_trunks` / :mod:`dinov3_encoder`."""
