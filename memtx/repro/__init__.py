"""``memtx repro ...``: the papers' claims reproduced at small scale, one module per paper.

- :mod:`memtx.repro.rmt`: RMT vs its ablation, Transformer-XL and no memory on copy and
  reverse, and facts-in-noise length generalisation (``memtx repro rmt``).
- :mod:`memtx.repro.memformer`: Memformer vs Transformer-XL caches vs no memory on real
  text: quality against inference memory and speed (``memtx repro memformer``).
- TMR lives with the fine-tuning code (:func:`memtx.finetune.repro_tmr`).
"""

from memtx.repro.rmt import RMT_VARIANTS, repro_rmt, write_rmt_table

__all__ = ["RMT_VARIANTS", "repro_rmt", "write_rmt_table"]
