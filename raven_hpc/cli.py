def main(argv=None):
    raise SystemExit("raven-hpc: CLI under construction")
