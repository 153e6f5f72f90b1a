from magihuman.bench.cli import main

main()
