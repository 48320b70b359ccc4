from labelless.data.sources import DATASETS, load_dataset
from labelless.data.stores import ImageStore

__all__ = ["DATASETS", "ImageStore", "load_dataset"]
