"""Data: where a task's examples come from (sources.py) and how they are batched (pipeline.py).

Example:
  data = load_task_data(DatasetSpec(source="digits", classes=(0, 1, 2, 3, 4)), image_size=32)
  ds = data.train_batches(batch_size=32, seed=0)
"""

from k4p1.data.pipeline import Split, TaskData, preprocess_eval, preprocess_train  # noqa: F401
from k4p1.data.sources import (CACHE_DIR_ENV, DATA_DIR_ENV, DATA_SOURCES, DataSource,  # noqa: F401
                               extract_tarball, load_task_data, num_classes_of)
from k4p1.errors import DataError  # noqa: F401
