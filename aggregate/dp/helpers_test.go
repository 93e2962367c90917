package dp
