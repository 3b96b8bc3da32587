"""The offline methods of the one loop: ``sft``, ``preference`` (the DPO family), ``kto``, ``reward_model``."""
