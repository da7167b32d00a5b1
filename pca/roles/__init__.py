"""Each role's start function: takes the process's ``Runtime``, registers its tasks and apps."""
