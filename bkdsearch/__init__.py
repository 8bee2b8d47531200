"""bkdsearch: declarative AutoML for block-wise logit distillation (Block-KD)."""

__version__ = "0.1.0"
