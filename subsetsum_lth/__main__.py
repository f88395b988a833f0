from subsetsum_lth.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
