"""Greengrass v2: recipes, packaging, pre-flight resolution, publishing and deploying."""
