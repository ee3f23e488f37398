"""Adapting a pretrained model with few trainable parameters: freezing, LoRA, adapters, prompts and prefixes."""

from aigc_book.adaptation.adapters import AdapterAfter, BottleneckAdapter, adapter_parameter_count, apply_adapters
from aigc_book.adaptation.freezing import ParameterCount, count_trainable, freeze_all_but, train_last_layers
from aigc_book.adaptation.lora import LoRALinear, apply_lora, lora_parameter_count, merge_lora
from aigc_book.adaptation.prompts import PrefixTuning, PromptTuning

__all__ = [
    "AdapterAfter", "BottleneckAdapter", "LoRALinear", "ParameterCount", "PrefixTuning", "PromptTuning",
    "adapter_parameter_count", "apply_adapters", "apply_lora", "count_trainable", "freeze_all_but",
    "lora_parameter_count", "merge_lora", "train_last_layers",
]
