"""Soft-label cache: frozen teachers' logits for a fixed bank of augmentations per sample,
computed once (in parallel Ray tasks when Ray is up), stored in Parquet and replayed by the
student, which then trains at plain-training speed.

  bank    the augmentation bank: A (crop, flip) draws per training sample, from a seed
  key     what the logits depend on (teacher weights, data, bank, format), hashed
  store   Parquet files + meta.json, written atomically; float16 or top-k
  build   the teacher forwards: Ray tasks or in-process
  client  the engine's TeacherClient that replays (sample, draw) → logits
  cache   ensure_soft_label_cache: load if the key matches, else build
"""
from raydistill.softlabels.bank import AugmentationBank
from raydistill.softlabels.cache import (SoftLabelCache, bank_for, cache_root, ensure_soft_label_cache,
                                         load_soft_label_cache, local_cache_dir)
from raydistill.softlabels.client import CachedTeachers, ReplayOnly, teacherless_client
from raydistill.softlabels.store import SoftLabelCacheError, TeacherLabels

__all__ = ["AugmentationBank", "CachedTeachers", "ReplayOnly", "teacherless_client", "SoftLabelCache",
           "SoftLabelCacheError", "TeacherLabels", "bank_for", "cache_root", "ensure_soft_label_cache",
           "load_soft_label_cache", "local_cache_dir"]
