"""Healing pruned models: logit distillation from the base on transformers' Trainer (`distill`), and
PEFT LoRA settings that skip pruned blocks (`lora`)."""
