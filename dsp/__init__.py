"""The DSP core: regenerate stiffness and consolidation from force and displacement."""
