"""The contract between stages: manifests, atomic writes, COCO masks, run directories, predictions and ground truth."""
