"""wsss_ray: weakly-supervised semantic segmentation (CAM, ReCAM, LPCAM, InferCam) on Ray."""
__version__ = "0.1.0"
