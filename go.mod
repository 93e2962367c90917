module github.com/wattagg/wattagg

go 1.26
