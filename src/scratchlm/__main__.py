"""`python -m scratchlm`: what launchers run (`torchrun ... -m scratchlm train CONFIG`)."""

from scratchlm.cli import main

main()
