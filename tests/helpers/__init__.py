"""Code the tests share: the loop oracle of PSTA and the training script torchrun runs."""
