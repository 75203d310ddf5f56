"""pretrainer: pretrain a backbone on unlabeled data, finetune, evaluate, deploy."""

__version__ = "0.1.0"
