"""wsss_ray: weakly-supervised semantic segmentation (CAM, ReCAM, LPCAM, InferCam) on Ray.

The map methods are importable without Ray: ``from wsss_ray import load_run, CAM, LPCAM``
(``wsss_ray.api``, loaded on first use so ``import wsss_ray`` stays light)."""
__version__ = "0.1.0"

API = ("load_run", "Run", "Model", "CAM", "ReCAM", "LPCAM", "InferCam", "AdvCAM")
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        from wsss_ray import api
        return getattr(api, name)
    raise AttributeError(f"module 'wsss_ray' has no attribute {name!r}")
