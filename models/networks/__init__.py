"""The networks and their checkpoint readers: InSPyReNet (salient masks), SAM, the salient ControlNet's key layouts."""
