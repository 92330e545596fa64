from mbm.cli import main

main()
