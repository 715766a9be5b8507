"""CI pipelines that follow the recipe DAG: one shared plan (``plan``), one writer per CI system
(``github``, ``gitlab``), and the small YAML writer they share (``yamltext``)."""
