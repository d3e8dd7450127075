from kdlab.sweep.run import cli

cli()
