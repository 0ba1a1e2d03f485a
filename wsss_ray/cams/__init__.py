"""Map methods (CAM, ReCAM, LPCAM, InferCam): pure torch, nothing here knows of Ray."""
