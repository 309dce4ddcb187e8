from modelzoo.cli.main import main

main()
