"""BLPSeg: scribble-supervised semantic segmentation with the Local Aggregation Module."""
