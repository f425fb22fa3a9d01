"""Building blocks of the MONAI Label app: settings, atlas, registration service, infer tasks, errors."""
