"""Greengrass v2: recipes, packaging, pre-flight resolution, publishing and deploying.

See docs/greengrass-packaging.md and docs/publishing.md.
"""
