"""Map methods (CAM, ReCAM, LPCAM, InferCam, AdvCAM): pure torch / numpy, nothing here knows of
Ray. Imports nothing itself: ``cams.clustering`` must stay importable without torch."""
